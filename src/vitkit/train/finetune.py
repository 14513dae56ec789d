"""Fine-tuning as the ViT paper does it (Sec. 3.2): pretrained body, new zero-initialised head.

The whole pretraining head (the tanh pre-logits layer too) is replaced by one D×K linear
layer whose weights start at zero, so the first steps do not push noise back into the
body. At a new resolution the patch size stays and the position embeddings are
resampled to the new grid by 2-D bicubic interpolation (exactly as timm does, done by
``vitkit.weights`` when ``img_size`` differs from the checkpoint's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..weights import load_model
from ..weights.build import HEADS


def load_pretrained(source: str | Path, img_size: int | None = None, patch_size: int | None = None,
                    **overrides: Any) -> nn.Module:
    """Pretrained weights from ``source`` (any layout vitkit reads), resampled to ``img_size``
    / ``patch_size`` when given; the head is still the pretraining one (see :func:`replace_head`)."""
    geometry = {k: v for k, v in dict(img_size=img_size, patch_size=patch_size).items() if v is not None}
    return load_model(source, **geometry, **overrides)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Drop the pretraining head (pre-logits included) for a zero-initialised D×K linear layer."""
    kwargs = {**model.model_kwargs, "num_classes": num_classes}
    if not isinstance(getattr(model, "pre_logits", nn.Identity()), nn.Identity):
        model.pre_logits = nn.Identity()
        model.num_features = model.embed_dim
        kwargs["representation_size"] = None
    model.reset_classifier(num_classes, zero_init=True)
    model.model_kwargs = kwargs
    return model


def input_geometry(model: nn.Module) -> tuple[int, int]:
    """(in_chans, img_size) a model takes; a CNN (no patch embedding) takes its build size, else 224."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None:
        return embed.in_chans, embed.img_size[0]
    return model.in_chans, getattr(model, "img_size", None) or 224


def freeze_body(model: nn.Module) -> None:
    """Linear probe: only the head learns; the body is a fixed feature extractor."""
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(HEADS)
