"""Mean attention distance of window attention (Swin): how far, in input pixels, each head looks.

The ViT paper's measure (see :mod:`~vitkit.explain.distance`) taken inside each window: a query's
distance is Σ_k a_qk · ‖c_q − c_k‖ over the keys of its window, with token centres in input pixels
(a stage-s token spans patch_size · 2^s pixels, patch merging having halved the grid s times).
Within a shifted window the mask gives tokens rolled in from the far border a weight of e^−100, and
tokens of one region keep their image offsets, so the window grid's distances are the image's.
The distance cannot exceed the window's diagonal: the measure shows how much of its window each
head uses, the locality Swin builds in.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..errors import VitkitError
from ..models.swin import SwinTransformer, WindowAttention
from .attention import forward_with_attention
from .distance import attention_distance, patch_distances


def window_layers(model: nn.Module) -> list[tuple[WindowAttention, torch.Tensor]]:
    """Each window attention layer in forward order, with the pixel distances between its window's tokens."""
    if not isinstance(model, SwinTransformer):
        raise VitkitError(f"window attention distance reads a Swin Transformer's windows; a {type(model).__name__} "
                          "has none (use mean_attention_distance for a ViT)")
    patch = model.patch_embed.patch_size
    layers = []
    for s, stage in enumerate(model.layers):
        stride = (patch[0] * 2 ** s, patch[1] * 2 ** s)
        for block in stage.blocks:
            layers.append((block.attn, patch_distances(block.window_size, stride)))
    return layers


def window_attention_distance(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[np.ndarray]:
    """Mean attention distance in input pixels per block, one array of [heads] per block (stages differ
    in head count), averaged over windows, queries and images. ``batches`` yields normalised images
    [B, C, H, W] or ``(images, labels)`` pairs, folded in as they pass."""
    layers = window_layers(model)
    sums = [torch.zeros(attn.num_heads, dtype=torch.float64) for attn, _ in layers]
    windows = [0] * len(layers)

    def fold(i: int, attn: torch.Tensor) -> None:
        sums[i] += attention_distance(attn, layers[i][1]).sum(dim=0).cpu()
        windows[i] += attn.shape[0]

    for batch in batches:
        forward_with_attention(model, batch[0] if isinstance(batch, (tuple, list)) else batch, fold, full=False)
    if not windows[0]:
        raise VitkitError("no images to measure the attention distance on (the image source is empty)")
    return [(s / n).numpy() for s, n in zip(sums, windows)]
