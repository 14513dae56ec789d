"""CvT, the Convolutional vision Transformer (Wu et al. 2021).

Two convolutions bring a CNN's locality into ViT. Each of the three stages starts with a
*convolutional token embedding*: an overlapping strided convolution and a LayerNorm that
shrink the token map and widen the tokens, a hierarchy like a CNN's. Attention computes
queries, keys and values through a *convolutional projection*: a depthwise 3x3
convolution and BatchNorm on the token map before each linear layer, with stride 2 for
keys and values, which cuts attention's cost 4x. There are no position embeddings (the
convolutions tell positions apart); only the last stage has a [class] token, which skips
the convolutions.

timm has no CvT: the reference is Hugging Face's ``CvtForImageClassification`` (as are its
two quirks: scores scaled by 1/√width rather than 1/√head width, and LayerNorm eps 1e-5).
Parameter names are those of Microsoft's original code (``patch_embed.proj``,
``attn.conv_proj_q.conv``, ``attn.proj_q``, ``mlp.fc1``...) under ``stages.{i}``;
``vitkit.weights.hf_cvt`` renames a Hugging Face folder to them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .features import feature_take_indices
from .fuse import fuse_conv_bn
from .layers import DropPath, Mlp
from .registry import register_model
from .spec import record_change

CvtPool = Literal["token", "avg"]


class ConvEmbed(nn.Module):
    """Convolutional token embedding: strided, overlapping conv, then LayerNorm over channels; NCHW in and out."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """Depthwise conv (no bias) + BatchNorm on the token map; ``fuse()`` folds them into one conv."""

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride, padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.conv, self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvAttention(nn.Module):
    """Multi-head attention whose q, k, v are convolutional projections of the token map, each
    followed by its own linear layer; the [class] token (if any) bypasses the convolutions."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kernel_size: int = 3, stride_q: int = 1,
                 padding_q: int = 1, stride_kv: int = 2, padding_kv: int = 1, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, with_cls_token: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.with_cls_token = num_heads, with_cls_token
        self.scale = dim ** -0.5  # the paper code's and HF's: the full width, not a head's
        self.conv_proj_q = ConvProjection(dim, kernel_size, stride_q, padding_q)
        self.conv_proj_k = ConvProjection(dim, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim, kernel_size, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[B, (1 +) H·W, D] tokens of an H x W map -> the same shape."""
        prefix = int(self.with_cls_token)
        cls, tokens = x[:, :prefix], x[:, prefix:]
        b, _, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, *size)
        q, k, v = (torch.cat([cls, conv(grid).flatten(2).transpose(1, 2)], dim=1)
                   for conv in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v))
        q, k, v = (self._heads(proj(t)) for proj, t in ((self.proj_q, q), (self.proj_k, k), (self.proj_v, v)))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                           scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)


class CvtBlock(nn.Module):
    """Pre-LayerNorm Transformer block with convolutional attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0, proj_drop: float = 0.0,
                 norm_eps: float = 1e-5, **attn_kwargs: Any):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ConvAttention(dim, num_heads, proj_drop=proj_drop, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvtStage(nn.Module):
    """Convolutional token embedding, optional [class] token, then Transformer blocks."""

    def __init__(self, in_chans: int, embed_dim: int, depth: int, num_heads: int, patch_size: int, patch_stride: int,
                 patch_padding: int, mlp_ratio: float, cls_token: bool, drop_rate: float, drop_path: Sequence[float],
                 norm_eps: float, **attn_kwargs: Any):
        super().__init__()
        self.patch_embed = ConvEmbed(patch_size, in_chans, embed_dim, patch_stride, patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.num_prefix_tokens = int(cls_token)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            CvtBlock(embed_dim, num_heads, mlp_ratio, r, drop_rate, norm_eps, with_cls_token=cls_token, **attn_kwargs)
            for r in drop_path])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """A [B, C, H, W] map -> ([B, (1 +) h·w, D] tokens, (h, w))."""
        x = self.patch_embed(x)
        size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, size)
        return x, size

    def to_map(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """This stage's tokens -> its [B, D, h, w] map, without the [class] token."""
        return x[:, self.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, *size)


class CvT(nn.Module):
    """CvT classifier. Per-stage settings take one value per stage or one for all; the names are
    Hugging Face's ``CvtConfig`` fields where timm has none (``patch_size`` is HF's ``patch_sizes``,
    ``cls_token`` says whether the last stage has one). ``global_pool`` defaults to the [class] token
    when there is one, else the mean of the normed tokens, as HF classifies; ``drop_path_rate``
    is a maximum ramped linearly over all blocks, or one maximum per stage (HF's and CvT's configs).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: CvtPool | None = None, embed_dim: Sequence[int] = (64, 192, 384),
                 depth: Sequence[int] = (1, 2, 10), num_heads: int | Sequence[int] = (1, 3, 6),
                 patch_size: int | Sequence[int] = (7, 3, 3), patch_stride: int | Sequence[int] = (4, 2, 2),
                 patch_padding: int | Sequence[int] = (2, 1, 1), mlp_ratio: float | Sequence[float] = 4.0,
                 qkv_bias: bool | Sequence[bool] = True, cls_token: bool = True,
                 kernel_qkv: int | Sequence[int] = 3, stride_q: int | Sequence[int] = 1,
                 padding_q: int | Sequence[int] = 1, stride_kv: int | Sequence[int] = 2,
                 padding_kv: int | Sequence[int] = 1, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float | Sequence[float] = 0.0, norm_eps: float = 1e-5, weight_init: str = ""):
        super().__init__()
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init {weight_init!r}: CvT starts from HF's init ('') or none ('skip')")
        n = len(embed_dim)
        per = {k: _per_stage(v, n, k) for k, v in dict(
            depth=depth, num_heads=num_heads, patch_size=patch_size, patch_stride=patch_stride,
            patch_padding=patch_padding, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, kernel_size=kernel_qkv,
            stride_q=stride_q, padding_q=padding_q, stride_kv=stride_kv, padding_kv=padding_kv).items()}
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.embed_dim = embed_dim[-1]
        self.num_prefix_tokens = int(cls_token)
        self.global_pool: CvtPool = self._checked_pool(global_pool or ("token" if cls_token else "avg"))
        self.in_chans, self.img_size = in_chans, img_size  # the input geometry vitkit's trainers read
        rates = _drop_path_rates(drop_path_rate, per["depth"])
        self.stages = nn.ModuleList()
        for i in range(n):
            self.stages.append(CvtStage(
                in_chans if i == 0 else embed_dim[i - 1], embed_dim[i], per["depth"][i], per["num_heads"][i],
                per["patch_size"][i], per["patch_stride"][i], per["patch_padding"][i], per["mlp_ratio"][i],
                cls_token and i == n - 1, drop_rate, rates[i], norm_eps, qkv_bias=per["qkv_bias"][i],
                kernel_size=per["kernel_size"][i], stride_q=per["stride_q"][i], padding_q=per["padding_q"][i],
                stride_kv=per["stride_kv"][i], padding_kv=per["padding_kv"][i], attn_drop=attn_drop_rate))
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = _new_head(self.num_features, num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """HF's: truncated normal (std 0.02) for linear and conv weights and the [class] token, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    def _checked_pool(self, global_pool: str) -> CvtPool:
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not self.num_prefix_tokens:
            raise ValueError("global_pool='token' needs the [class] token this CvT was built without (cls_token)")
        return global_pool  # type: ignore[return-value]

    def reset_classifier(self, num_classes: int, global_pool: CvtPool | None = None, zero_init: bool = False) -> None:
        """A fresh head for ``num_classes`` outputs (``zero_init``: all zeros, the ViT paper's fine-tuning head)."""
        if global_pool is not None:
            self.global_pool = self._checked_pool(global_pool)
        self.num_classes = num_classes
        self.head = _new_head(self.num_features, num_classes, zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> the last stage's normalised tokens [B, (1 +) N, D]."""
        for stage in self.stages[:-1]:
            x = stage.to_map(*stage(x))
        return self.norm(self.stages[-1](x)[0])

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: Literal["NCHW"] = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each chosen stage's output as a [B, C, H, W] map, the [class] token left out (timm's contract;
        ``norm`` passes the last stage's through the final norm, which only fits its width). Unless
        ``intermediates_only``, the final features (``forward_features``) come first."""
        if output_fmt != "NCHW":
            raise ValueError(f"CvT's intermediates are feature maps: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        intermediates = []
        for i, stage in enumerate(self.stages):
            if intermediates_only and i > last:
                break
            tokens, size = stage(x)
            if i == len(self.stages) - 1:
                final = self.norm(tokens)
                tokens = final if norm else tokens
            x = stage.to_map(tokens, size)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (final, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _per_stage(value: Any, stages: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * stages
    if len(values) != stages:
        raise ValueError(f"{name} needs one value per stage ({stages}), got {len(values)}")
    return values


def _drop_path_rates(rate: float | Sequence[float], depths: Sequence[int]) -> list[list[float]]:
    """Per block: a float ramps linearly from 0 over all blocks (timm's rule), a sequence from 0 to
    each stage's own maximum within that stage (CvT's configs: 0, 0, 0.1)."""
    if isinstance(rate, (int, float)):
        total, done, out = sum(depths), 0, []
        for d in depths:
            out.append([rate * (done + j) / max(total - 1, 1) for j in range(d)])
            done += d
        return out
    rates = _per_stage(rate, len(depths), "drop_path_rate")
    return [[r * j / max(d - 1, 1) for j in range(d)] for r, d in zip(rates, depths)]


def _new_head(features: int, num_classes: int, zero_init: bool = False) -> nn.Module:
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(features, num_classes)
    if zero_init:
        nn.init.zeros_(head.weight)
    else:
        nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


# --- registry: Hugging Face's microsoft/cvt-* configurations, and one for 28x28 grayscale ---------
register_model("cvt_13", CvT, "CvT-13 (microsoft/cvt-13): stages of width 64/192/384, depth 1/2/10",
               embed_dim=(64, 192, 384), num_heads=(1, 3, 6), depth=(1, 2, 10))
register_model("cvt_21", CvT, "CvT-21 (microsoft/cvt-21): stages of width 64/192/384, depth 1/4/16",
               embed_dim=(64, 192, 384), num_heads=(1, 3, 6), depth=(1, 4, 16))
register_model("cvt_w24", CvT, "CvT-W24 at 384px (microsoft/cvt-w24-384-22k): width 192/768/1024, depth 2/2/20",
               img_size=384, embed_dim=(192, 768, 1024), num_heads=(3, 12, 16), depth=(2, 2, 20))
register_model("cvt_mini_28", CvT,
               "CvT for 28x28 grayscale: 3x3 stride-2 token embeddings (14/7/4 px maps), width 32/64/128",
               img_size=28, in_chans=1, num_classes=10, embed_dim=(32, 64, 128), num_heads=(1, 2, 4),
               depth=(1, 2, 4), patch_size=3, patch_stride=2, patch_padding=1, mlp_ratio=2.0)
