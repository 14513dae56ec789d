"""Resample learned position embeddings to a new patch grid.

Fine-tuning at a higher resolution keeps the patch size, so the grid grows and the
learned 1-D embeddings are read as a 2-D map and interpolated (ViT paper, Sec. 3.2).
This follows ``timm.layers.resample_abs_pos_embed`` exactly (bicubic, antialias, fp32,
prefix tokens kept apart) so that a resampled timm checkpoint gives timm's logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(pos_embed: torch.Tensor, new_size: tuple[int, int],
                           old_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                           interpolation: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """[1, prefix + H*W, D] -> [1, prefix + H'*W', D]; ``old_size`` defaults to a square grid."""
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(n_grid)
        if side * side != n_grid:
            raise ValueError(f"cannot infer the grid of {n_grid} position embeddings; pass old_size")
        old_size = (side, side)
    if old_size[0] * old_size[1] != n_grid:
        raise ValueError(f"position embeddings hold {n_grid} grid entries, not {old_size[0]}x{old_size[1]}")
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
