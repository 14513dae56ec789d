"""Pooling-based Vision Transformer, PiT (Heo et al., 2021), with timm's names (``PoolingVisionTransformer``).

What changes against ViT: patches come from a convolution whose stride is half its kernel
(overlapping patches), and the token map shrinks between stages as a CNN's does: a depthwise
3×3 stride-2 conv halves the map while doubling its channels, and a linear layer widens the
[class] token to match. Later stages thus attend over a quarter of the tokens at twice the width
and more heads. Position embeddings are a learned 2-D map added to the stem's output; the [class]
token (and DeiT's distillation token, in the ``_distilled`` models) rides through every stage.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import Block, to_2tuple
from .pos_embed import resample_abs_pos_embed
from .registry import register_model
from .spec import record_change
from .stages import check_feature_format, drop_path_rates, feature_take_indices, nchw_as, new_classifier

Size = tuple[int, int]


class ConvEmbedding(nn.Module):
    """The stem: one conv, kernel ``patch_size``, stride ``stride`` (overlapping when stride < patch)."""

    def __init__(self, in_channels: int, out_channels: int, img_size: int | Size = 224, patch_size: int = 16,
                 stride: int = 8, padding: int = 0):
        super().__init__()
        self.in_chans, self.img_size = in_channels, to_2tuple(img_size)
        self.patch_size, self.stride = to_2tuple(patch_size), stride
        self.grid_size = tuple((s + 2 * padding - p) // stride + 1 for s, p in zip(self.img_size, self.patch_size))
        if min(self.grid_size) < 1:
            raise ValueError(f"image size {img_size} is smaller than the patch size {patch_size}")
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv = nn.Conv2d(in_channels, out_channels, self.patch_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(f"model expects {self.in_chans} input channels, got {c}")
        if (h, w) != self.img_size:
            raise ValueError(f"model expects {self.img_size[0]}x{self.img_size[1]} input, got {h}x{w} (PiT's position "
                             "embeddings are fixed to one size: build it, or load its weights, with img_size)")
        return self.conv(x)


class Pooling(nn.Module):
    """Between stages: a depthwise conv (kernel stride + 1) shrinks the map and multiplies its channels,
    ``fc`` widens the prefix tokens to the same width."""

    def __init__(self, in_feature: int, out_feature: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_feature, out_feature, kernel_size=stride + 1, padding=stride // 2, stride=stride,
                              groups=in_feature)
        self.fc = nn.Linear(in_feature, out_feature)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls_tokens)


class Transformer(nn.Module):
    """One stage: (pooling, all stages but the first), then ViT blocks over [prefix tokens, map tokens]."""

    def __init__(self, base_dim: int, depth: int, heads: int, mlp_ratio: float, pool: Pooling | None = None,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path_prob: Sequence[float] | None = None):
        super().__init__()
        dim = base_dim * heads
        rates = drop_path_prob or [0.0] * depth
        self.pool = pool
        self.blocks = nn.Sequential(*[
            Block(dim, heads, mlp_ratio, qkv_bias=True, proj_drop=proj_drop, attn_drop=attn_drop, drop_path=rates[i],
                  norm_eps=1e-6)
            for i in range(depth)])

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] map and [B, prefix, C] tokens in, the same (pooled, transformed) out."""
        if self.pool is not None:
            x, cls_tokens = self.pool(x, cls_tokens)
        b, c, h, w = x.shape
        prefix = cls_tokens.shape[1]
        x = self.blocks(torch.cat((cls_tokens, x.flatten(2).transpose(1, 2)), dim=1))
        return x[:, prefix:].transpose(1, 2).reshape(b, c, h, w), x[:, :prefix]


class PoolingVisionTransformer(nn.Module):
    """PiT. Keyword names match timm's ``PoolingVisionTransformer``; stage i is ``base_dims[i] * heads[i]``
    wide. ``distilled=True`` adds DeiT's distillation token and head: ``forward`` averages the two
    heads, except in training after ``set_distilled_training(True)``, when it returns both.
    ``forward_features`` returns the normalised prefix tokens [B, 1 or 2, D].
    """

    def __init__(self, img_size: int | Size = 224, patch_size: int = 16, stride: int = 8,
                 base_dims: Sequence[int] = (48, 48, 48), depth: Sequence[int] = (2, 6, 4),
                 heads: Sequence[int] = (2, 4, 8), mlp_ratio: float = 4.0, num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = "token", distilled: bool = False, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, weight_init: str = ""):
        super().__init__()
        if global_pool != "token":
            raise ValueError(f"PiT classifies its [class] token: global_pool must be 'token', got {global_pool!r}")
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init must be '' (timm's) or 'skip', got {weight_init!r}")
        if not len(base_dims) == len(depth) == len(heads):
            raise ValueError("base_dims, depth and heads need one entry per stage")
        dims = [b * h for b, h in zip(base_dims, heads)]
        self.base_dims, self.heads = tuple(base_dims), tuple(heads)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_tokens = self.num_prefix_tokens = 2 if distilled else 1
        self.distilled_training = False
        self.patch_embed = ConvEmbedding(in_chans, dims[0], img_size, patch_size, stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], *self.patch_embed.grid_size))
        self.cls_token = nn.Parameter(torch.zeros(1, self.num_tokens, dims[0]))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.transformers = nn.Sequential(*[
            Transformer(base_dims[i], depth[i], heads[i], mlp_ratio, Pooling(dims[i - 1], dims[i]) if i else None,
                        proj_drop_rate, attn_drop_rate, rates[i])
            for i in range(len(depth))])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.num_features = self.embed_dim = dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = new_classifier(self.num_features, num_classes)
        self.head_dist = new_classifier(self.num_features, num_classes) if distilled else None
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for the position map and prefix tokens; layers keep torch's init."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Return ``(cls_logits, dist_logits)`` in training mode: switch on for hard distillation."""
        if enable and self.head_dist is None:
            raise ValueError("this PiT has no distillation head (build a pit_*_distilled_* model)")
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, zero_init: bool = False) -> None:
        """New head(s) for ``num_classes`` outputs (``zero_init``: the ViT paper's fine-tuning head)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"PiT classifies its [class] token: global_pool must stay 'token', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, zero_init)
        if self.head_dist is not None:
            self.head_dist = new_classifier(self.num_features, num_classes, zero_init)
        record_change(self, num_classes=num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        return x, self.cls_token.expand(x.shape[0], -1, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, cls_tokens = self._stem(x)
        for stage in self.transformers:
            x, cls_tokens = stage(x, cls_tokens)
        return self.norm(cls_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        cls = self.head_drop(x[:, 0])
        if self.head_dist is None:
            return cls if pre_logits else self.head(cls)
        dist = self.head_drop(x[:, 1])
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The chosen stages' token maps (the final norm belongs to the prefix tokens, so ``norm`` changes
        nothing), and unless ``intermediates_only`` the ``forward_features`` output too, as timm's."""
        check_feature_format(output_fmt)
        take, last = feature_take_indices(len(self.transformers), indices)
        x, cls_tokens = self._stem(x)
        maps = []
        for i, stage in enumerate(self.transformers[:last + 1] if stop_early else self.transformers):
            x, cls_tokens = stage(x, cls_tokens)
            if i in take:
                maps.append(nchw_as(x, output_fmt))
        return maps if intermediates_only else (self.norm(cls_tokens), maps)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint made at another image size: its position map resampled bicubically (antialiased,
        as :func:`~vitkit.models.pos_embed.resample_abs_pos_embed` does for ViT) to this model's grid."""
        pos = state_dict.get("pos_embed")
        if pos is None or pos.shape == self.pos_embed.shape:
            return state_dict
        _, c, h, w = pos.shape
        flat = resample_abs_pos_embed(pos.flatten(2).transpose(1, 2), self.patch_embed.grid_size, (h, w), 0)
        return {**state_dict, "pos_embed": flat.transpose(1, 2).reshape(1, c, *self.patch_embed.grid_size)}


# --- registry: timm's PiTs, and a small one for 28x28 grayscale --------------------------------------
_SIZES = {  # patch_size, stride, base_dims, depth, heads
    "ti": (16, 8, (32, 32, 32), (2, 6, 4), (2, 4, 8)),
    "xs": (16, 8, (48, 48, 48), (2, 6, 4), (2, 4, 8)),
    "s": (16, 8, (48, 48, 48), (2, 6, 4), (3, 6, 12)),
    "b": (14, 7, (64, 64, 64), (3, 6, 4), (4, 8, 16)),
}
for _size, (_patch, _stride, _dims, _depth, _heads) in _SIZES.items():
    _cfg = dict(img_size=224, patch_size=_patch, stride=_stride, base_dims=_dims, depth=_depth, heads=_heads,
                mlp_ratio=4.0)
    register_model(f"pit_{_size}_224", PoolingVisionTransformer, f"PiT-{_size.upper()} at 224px", **_cfg)
    register_model(f"pit_{_size}_distilled_224", PoolingVisionTransformer,
                   f"PiT-{_size.upper()} at 224px with DeiT's distillation token", distilled=True, **_cfg)
register_model("pit_mini_28", PoolingVisionTransformer,
               "PiT for 28x28 grayscale: 4x4 stem at stride 2 (13x13 tokens, D64), pooled to 7x7 (D128)",
               img_size=28, in_chans=1, num_classes=10, patch_size=4, stride=2, base_dims=(32, 32), depth=(2, 4),
               heads=(2, 4), mlp_ratio=2.0)
