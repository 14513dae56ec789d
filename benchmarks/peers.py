"""The same architectures in the peer libraries, built with random weights for timing.

HF ``transformers`` ViT (both attention implementations) and lucidrains' ``vit-pytorch``.
``vit_pytorch/__init__.py`` imports torchvision (broken in this environment, and not
needed by the ViT itself), so its ``vit.py`` is loaded on its own.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """HF models return an output object; timing and losses want the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def hf_vit(img_size: int, patch: int, in_chans: int, dim: int, depth: int, heads: int, mlp_ratio: float,
           num_classes: int, attn: str) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(image_size=img_size, patch_size=patch, num_channels=in_chans, hidden_size=dim,
                       num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=int(dim * mlp_ratio),
                       layer_norm_eps=1e-6, num_labels=num_classes, attn_implementation=attn)
    return LogitsOnly(ViTForImageClassification(config))


@lru_cache(maxsize=1)
def _vit_pytorch_module():
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or spec.origin is None:
        raise ImportError("vit-pytorch is not installed")
    path = Path(spec.origin).parent / "vit.py"
    module_spec = importlib.util.spec_from_file_location("_vit_pytorch_vit", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def lucidrains_vit(img_size: int, patch: int, in_chans: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                   num_classes: int) -> nn.Module:
    return _vit_pytorch_module().ViT(image_size=img_size, patch_size=patch, num_classes=num_classes, dim=dim,
                                     depth=depth, heads=heads, mlp_dim=int(dim * mlp_ratio), channels=in_chans,
                                     dim_head=dim // heads)


def peers(**arch) -> dict[str, nn.Module]:
    """Name -> fp32 model in eval mode, for an architecture given as in ``hf_vit``."""
    return {"hf-sdpa": hf_vit(**arch, attn="sdpa").eval(), "hf-eager": hf_vit(**arch, attn="eager").eval(),
            "vit-pytorch": lucidrains_vit(**arch).eval()}
