"""Position embeddings: fixed 2-D sin-cos ones, and resampling learned ones to a new patch grid.

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


def sincos_2d_pos_embed(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[1, H*W, D] fixed embeddings: a quarter of the channels each for sin/cos of x and y at
    geometric frequencies (MAE; "Better plain ViT baselines", Beyer et al. 2022, which found them
    as good as learned ones), laid out as vit-pytorch's ``posemb_sincos_2d``. Nothing to learn: a
    short run spends no epochs discovering that neighbouring patches are near."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / max(dim // 4 - 1, 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()[None]


def mae_sincos_2d_pos_embed(grid_size: tuple[int, int], dim: int, prefix_tokens: int = 1) -> torch.Tensor:
    """[1, prefix + H*W, D] fixed embeddings laid out exactly as MAE's ``get_2d_sincos_pos_embed`` (and
    Hugging Face's ViTMAE): half the channels for the column, half for the row, each [sin, cos] at
    frequencies 1/10000^(k/(D/4)), k < D/4; prefix tokens ([class]) get zeros. Released MAE weights
    store these; a model built here must start from the same ones to match the paper's code."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size[0], dtype=torch.float64),
                                torch.arange(grid_size[1], dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        out = pos.flatten()[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    grid = torch.cat([one_axis(cols), one_axis(rows)], dim=1)  # MAE's meshgrid(w, h): its "h" half is x
    return torch.cat([torch.zeros(prefix_tokens, dim, dtype=torch.float64), grid]).float()[None]
