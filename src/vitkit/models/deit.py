"""DeiT's distilled ViT (Touvron et al., 2021), with timm's names (``VisionTransformerDistilled``).

A second learned token, the distillation token, sits after [class]; it attends like any
token and gets its own head, trained on the teacher's hard labels while the [class]
head learns the true ones. At test time the two heads' logits are averaged. Everything
else is the plain ``VisionTransformer``; the plain (undistilled) DeiTs *are* ViTs with
DeiT's sizes and training recipe, so they are registered here as ``VisionTransformer``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import SMALL_SIZES, VIT_SIZES, register_model
from .vit import GlobalPool, VisionTransformer


class DistilledVisionTransformer(VisionTransformer):
    """ViT with a distillation token and head; takes ``VisionTransformer``'s keyword arguments.

    ``forward`` returns the mean of the [class] and distillation heads' logits, except in
    training after ``set_distilled_training(True)``, when it returns both
    ``(cls_logits, dist_logits)`` so that the loss can send the second to the teacher.
    ``dist_head=False`` keeps the token but classifies from [class] alone, which is what
    Hugging Face's ``DeiTForImageClassification`` (fine-tuned without a teacher) computes.
    ``global_pool='avg'`` (with or without [class]) feeds the class head the mean of the patch
    tokens instead, as the small-data ViTs here prefer; the distillation token keeps its own head,
    both pooled features through the same ``fc_norm``.
    """

    extra_tokens = 1

    def __init__(self, *args: Any, dist_head: bool = True, weight_init: str = "", **kwargs: Any):
        super().__init__(*args, weight_init="skip", **kwargs)
        if self.global_pool not in ("token", "avg") or not isinstance(self.pre_logits, nn.Identity):
            raise ValueError("a distilled ViT classifies a pooled feature and its distillation token: it needs "
                             "global_pool 'token' or 'avg' and no representation_size")
        self.dist_head = dist_head
        self.distilled_training = False
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.head_dist = self.new_head() if dist_head else nn.Identity()
        if weight_init != "skip":
            self.init_weights(weight_init)

    def init_weights(self, mode: str = "") -> None:
        """timm's: the ViT's init, and truncated normal (std 0.02) for the distillation token."""
        super().init_weights(mode)
        nn.init.trunc_normal_(self.dist_token, std=0.02)

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Return ``(cls_logits, dist_logits)`` in training mode: switch on for hard distillation."""
        if enable and not self.dist_head:
            raise ValueError("this model has no distillation head (dist_head=False) to train")
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None,
                         zero_init: bool = False) -> None:
        """New [class] and distillation heads for ``num_classes`` outputs."""
        if global_pool not in (None, self.global_pool):
            raise ValueError(f"a distilled ViT keeps its pooling: global_pool must stay {self.global_pool!r}")
        super().reset_classifier(num_classes, zero_init=zero_init)
        self.head_dist = self.new_head(zero_init) if self.dist_head else nn.Identity()

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        return super().prefix_tokens(batch) + [self.dist_token.expand(batch, -1, -1)]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.dist_head:
            return super().forward_head(x, pre_logits)
        cls = self.head_drop(self.fc_norm(self.pool(x)))
        dist = self.head_drop(self.fc_norm(x[:, self.num_prefix_tokens - 1]))  # the last prefix token
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2


# --- registry: timm's DeiTs, and 28x28 grayscale students beside vitkit's small ViTs --------
register_model("vision_transformer_distilled", DistilledVisionTransformer,
               "a DeiT with a distillation token, of any size: what such weights of no registered name rebuild")
for _size in ("tiny", "small", "base"):
    for _res in ((224, 384) if _size == "base" else (224,)):
        _cfg = dict(img_size=_res, patch_size=16, **VIT_SIZES[_size])
        register_model(f"deit_{_size}_patch16_{_res}", VisionTransformer,
                       f"DeiT-{_size[0].upper()}/16 at {_res}px (a ViT trained with DeiT's recipe)", **_cfg)
        register_model(f"deit_{_size}_distilled_patch16_{_res}", DistilledVisionTransformer,
                       f"DeiT-{_size[0].upper()}/16 at {_res}px with a distillation token", **_cfg)
for _size in SMALL_SIZES:
    for _patch in (4, 7):
        _cfg = dict(img_size=28, patch_size=_patch, in_chans=1, num_classes=10, **SMALL_SIZES[_size])
        register_model(f"deit_{_size}_patch{_patch}_28", VisionTransformer,
                       f"DeiT {_size} for 28x28 grayscale, patch {_patch}", **_cfg)
        register_model(f"deit_{_size}_distilled_patch{_patch}_28", DistilledVisionTransformer,
                       f"DeiT {_size} student for 28x28 grayscale, patch {_patch}, with a distillation token", **_cfg)
