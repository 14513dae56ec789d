"""What the hierarchical models (Swin, PVT v2, PiT) share: their stages give feature maps at falling
resolutions, which ``forward_intermediates`` hands out by timm's ``feature_take_indices`` contract, and
their classifiers are plain linear layers that ``reset_classifier`` replaces."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

FEATURE_FORMATS = ("NCHW", "NHWC")


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """(sorted-as-given stage indices, the largest): ``None`` takes all, an int n the last n, a sequence those
    stages (negative ones count from the end)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices}: take between 1 and {num_features} of the {num_features} stages")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"stage index {i} is out of range for {num_features} stages")
            take.append(idx)
    if not take:
        raise ValueError("indices selects no stage")
    return take, max(take)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 over all blocks (timm's ``linspace``), split by stage;
    plain floats so that a model builds on the meta device too."""
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths)]


def check_feature_format(output_fmt: str) -> None:
    if output_fmt not in FEATURE_FORMATS:
        raise ValueError(f"output_fmt must be one of {', '.join(FEATURE_FORMATS)}, got {output_fmt!r}")


def nhwc_as(x: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """A [B, H, W, C] map in the layout asked for."""
    return x.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x


def nchw_as(x: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """A [B, C, H, W] map in the layout asked for."""
    return x.permute(0, 2, 3, 1).contiguous() if output_fmt == "NHWC" else x


def new_classifier(in_features: int, num_classes: int, zero_init: bool = False) -> nn.Module:
    """A fresh ``in_features`` -> ``num_classes`` linear layer (Identity for 0 classes): truncated normal
    (std 0.02) as timm initialises heads, or zeros (the ViT paper's fine-tuning head)."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes)
    if zero_init:
        nn.init.zeros_(head.weight)
    else:
        nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
