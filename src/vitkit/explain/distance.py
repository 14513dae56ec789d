"""Mean attention distance: how far, in pixels, each head looks (ViT paper, Fig. 7 right, App. D.7).

For a query patch the distance is Σ_k a_qk · ‖c_q − c_k‖, with c the patch centres in
input pixels; it is averaged over query patches and images, per layer and head. The
paper uses it as the ViT analogue of a CNN's receptive field: some heads attend
globally already in the lowest layers, others stay local.

Prefix tokens ([class], distillation) have no position, so they are dropped as queries
and as keys, and each query's remaining weights over patch keys are renormalised to sum
to 1: the result is the mean distance *among patches*, not diluted by whatever share of
attention goes to a prefix token.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..errors import VitkitError
from .attention import forward_with_attention
from .tokens import attention_modules, check_vit, input_grid, patch_size


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Euclidean pixel distances between all patch centres: [gh·gw, gh·gw], patches row-major."""
    # Corner instead of centre coordinates: the half-patch offset cancels in every difference.
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * patch[0], cols.flatten() * patch[1]], dim=-1).double()
    return torch.cdist(centres, centres)


def attention_distance(attn: torch.Tensor, distances: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """One layer's attention [B, heads, N, N] -> mean distance per image and head [B, heads].

    ``distances`` is :func:`patch_distances` for the input's grid; the first ``prefix``
    tokens are dropped (see the module docstring).
    """
    a = attn[..., prefix:, prefix:].double()
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_query = (a * distances.to(a.device)).sum(dim=-1)  # [B, heads, patches]
    return per_query.mean(dim=-1)


class DistanceAccumulator:
    """Running sum of per-image mean distances, per layer and head, over any number of batches."""

    def __init__(self, depth: int, heads: int, patch: tuple[int, int]):
        self.sums = torch.zeros(depth, heads, dtype=torch.float64)
        self.uniform_sum = 0.0  # what uniform attention would give: the reference line in the figure
        self.images = 0
        self.patch = patch
        self.distances: torch.Tensor | None = None

    def start_batch(self, grid: tuple[int, int], batch: int) -> None:
        self.distances = patch_distances(grid, self.patch)  # inputs may change size between batches
        self.uniform_sum += float(self.distances.mean()) * batch
        self.images += batch

    def update(self, layer: int, attn: torch.Tensor) -> None:
        """One layer's attention as the layer has it: over the prefix tokens that take part, then the patches."""
        if attn.shape[-2] != attn.shape[-1]:
            raise VitkitError(f"attention layer {layer} has no patch queries (CaiT's class attention attends from "
                              "[class] alone, which has no position): mean attention distance needs them")
        prefix = attn.shape[-1] - self.distances.shape[0]
        self.sums[layer] += attention_distance(attn, self.distances, prefix).sum(dim=0).cpu()

    def mean(self) -> np.ndarray:
        if not self.images:
            raise VitkitError("no images to measure the attention distance on (the image source is empty)")
        return (self.sums / self.images).numpy()

    def uniform(self) -> float:
        """Mean distance under uniform attention: the mean pairwise patch-centre distance."""
        return self.uniform_sum / max(self.images, 1)


def fold_attention_distance(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor]
                            ) -> DistanceAccumulator:
    """Run the model over ``batches`` and fold every layer's attention distance into one accumulator.
    A tensor [B, C, H, W] is one batch (iterating it would hand over single images)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    mods = attention_modules(check_vit(model))
    acc = DistanceAccumulator(len(mods), mods[0].num_heads, patch_size(model))
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        acc.start_batch(input_grid(model, x), x.shape[0])
        forward_with_attention(model, x, acc.update, full=False)  # ConViT's GPSA layers have no [class]
    return acc


def mean_attention_distance(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor]) -> np.ndarray:
    """Mean attention distance in input pixels, per layer and head: [layers, heads].

    ``batches`` is one normalised image tensor [B, C, H, W], or yields such tensors (or
    ``(images, labels)`` pairs, as a DataLoader does); each batch is folded in as it passes, so
    any number of images fits in memory.
    """
    return fold_attention_distance(model, batches).mean()
