"""Fold inference-time BatchNorm into the linear map beside it.

In eval mode BatchNorm is a fixed per-channel affine map, y = (x − μ)/σ·γ + β, so the
convolution or linear layer before it (or the linear layer after it) can absorb it: one
layer's work instead of two, the same outputs up to rounding. A module opts in with a
``fuse()`` method that returns its fused replacement (timm's convention: LeViT's
``ConvNorm``, ``LinearNorm``, ``NormLinear``, CvT's depthwise projections), and
:func:`fuse_batchnorm` swaps them all; ``prepare_for_inference`` calls it.
"""
from __future__ import annotations

import torch
from torch import nn


def _scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with bn(x) = s·x + t per channel, from the running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """bn(conv(x)) as one convolution."""
    scale, shift = _scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
    return fused


@torch.no_grad()
def fuse_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """bn(linear(x)) as one linear layer."""
    scale, shift = _scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[:, None])
    fused.bias.copy_(shift if linear.bias is None else shift + linear.bias * scale)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """linear(bn(x)) as one linear layer: W(s·x + t) + b = (W·diag s) x + (W t + b)."""
    scale, shift = _scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[None, :])
    fused.bias.copy_(linear.weight @ shift + (0 if linear.bias is None else linear.bias))
    return fused


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a ``fuse()`` method by the layer it returns; ``model``
    must be in eval mode (the running statistics are what gets folded). Returns ``model``."""
    if model.training:
        raise ValueError("fuse_batchnorm folds the running statistics of eval mode: call model.eval() first")
    for module in list(model.modules()):
        for name, child in module.named_children():
            if callable(getattr(child, "fuse", None)):
                setattr(module, name, child.fuse())
    return model


def has_fusable(model: nn.Module) -> bool:
    return any(callable(getattr(m, "fuse", None)) for m in model.modules())
