"""Fit a patch-embedding kernel to a new patch size.

A new grid only needs the position embeddings resized (``resample_abs_pos_embed``); a
new patch size needs the kernel resized so that a resized patch gives the same token:
FlexiViT (Beyer et al., 2023) solves <x, w> = <resize(x), w'> for w' with a
pseudo-inverse, which is exact when the patch grows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """R with resize(x).flatten() == R @ x.flatten(), built by resizing each basis image."""
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float32).reshape(n_old, 1, *old)
    resized = F.interpolate(basis, size=new, mode="bicubic", antialias=True)
    return resized.reshape(n_old, -1).T.double()


def resample_patch_embed(weight: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """[D, C, p, p] -> [D, C, p', p'] such that tokens of bicubic-resized patches are unchanged."""
    old_size = tuple(weight.shape[-2:])
    if old_size == tuple(new_size):
        return weight
    pinv = torch.linalg.pinv(_resize_matrix(old_size, tuple(new_size)).T)
    flat = weight.double().reshape(-1, old_size[0] * old_size[1])
    return (flat @ pinv.T).reshape(*weight.shape[:2], *new_size).to(weight.dtype)

