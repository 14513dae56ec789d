"""Transformer in Transformer (TNT, Han et al. 2021), with timm's names (``timm.models.tnt.TNT``).

ViT reads a patch through one linear projection, so what lies inside a patch is never
attended to. TNT keeps a second, finer sequence per patch: each patch is cut into
"pixel" tokens (a 7x7 convolution of stride ``first_stride`` run on each patch alone), and
every block first runs an inner transformer over the pixel tokens of each patch, then
adds their flattened, projected result to that patch's token before the outer (ViT)
transformer attends across patches. The outer sequence, [class] token and head are ViT's.
This is timm's current layout (``legacy=False``: the image is cut into patches before the
convolution, and the per-block projection is LayerNorm, Linear without bias, LayerNorm).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .features import feature_take_indices
from .layers import DropPath, Mlp, to_2tuple
from .registry import register_model
from .spec import record_change

TntPool = Literal["token", "avg", ""]


class TntAttention(nn.Module):
    """Multi-head self-attention with timm TNT's layout: queries and keys from one linear layer
    (``qk``), values from another (``v``), neither with a bias by default."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k = self.qk(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class PixelEmbed(nn.Module):
    """Image -> per-patch pixel tokens [B·patches, pixels, inner_dim].

    Each P×P patch is convolved on its own (7x7, padding 3, stride ``stride``: zero padding at the
    patch border, so no pixel token sees a neighbouring patch), giving ⌈P/stride⌉² pixel tokens.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, in_dim: int = 48, stride: int = 4):
        super().__init__()
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(f"image size {img_size} is not divisible by the patch size {patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.in_dim = in_chans, in_dim
        self.new_patch_size = [math.ceil(p / stride) for p in self.patch_size]  # pixel grid per patch (timm's name)
        self.proj = nn.Conv2d(in_chans, in_dim, kernel_size=7, padding=3, stride=stride)

    def forward(self, x: torch.Tensor, pixel_pos: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.in_chans, *self.img_size):
            raise ValueError(f"model expects {self.in_chans}x{self.img_size[0]}x{self.img_size[1]} input, "
                             f"got {c}x{h}x{w}")
        (gh, gw), (ph, pw) = self.grid_size, self.patch_size
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c, ph, pw)
        pixels = self.proj(patches) + pixel_pos
        return pixels.flatten(2).transpose(1, 2)


class TntBlock(nn.Module):
    """Inner transformer over each patch's pixel tokens, their sum into the patch tokens, then the
    outer (ViT) transformer over [class] + patch tokens; timm's ``tnt.Block``."""

    def __init__(self, dim: int, dim_out: int, num_pixel: int, num_heads_in: int = 4, num_heads_out: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.attn_in = TntAttention(dim, num_heads_in, qkv_bias, attn_drop, proj_drop)
        self.norm_mlp_in = nn.LayerNorm(dim)
        self.mlp_in = Mlp(dim, dim * 4, drop=proj_drop)
        self.norm1_proj = nn.LayerNorm(dim * num_pixel)
        self.proj = nn.Linear(dim * num_pixel, dim_out, bias=False)
        self.norm2_proj = nn.LayerNorm(dim_out)
        self.norm_out = nn.LayerNorm(dim_out)
        self.attn_out = TntAttention(dim_out, num_heads_out, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm_mlp = nn.LayerNorm(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), drop=proj_drop)

    def forward(self, pixel_embed: torch.Tensor, patch_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        b, n, _ = patch_embed.shape
        inner = self.norm2_proj(self.proj(self.norm1_proj(pixel_embed.reshape(b, n - 1, -1))))
        patch_embed = torch.cat([patch_embed[:, :1], patch_embed[:, 1:] + inner], dim=1)
        patch_embed = patch_embed + self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        patch_embed = patch_embed + self.drop_path(self.mlp(self.norm_mlp(patch_embed)))
        return pixel_embed, patch_embed


class TNT(nn.Module):
    """Transformer in Transformer; keyword names as ``timm.models.tnt.TNT`` (without ``norm_layer``
    and ``legacy``: LayerNorm and the current layout only)."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: TntPool = "token", embed_dim: int = 768, inner_dim: int = 48,
                 depth: int = 12, num_heads_inner: int = 4, num_heads_outer: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 first_stride: int = 4, weight_init: str = ""):
        super().__init__()
        _check_pool(global_pool)
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init {weight_init!r}: TNT starts from timm's init ('') or none ('skip')")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.in_chans, self.img_size = in_chans, img_size  # the input geometry vitkit's trainers read
        self.pixel_embed = PixelEmbed(img_size, patch_size, in_chans, inner_dim, first_stride)
        self.num_patches = self.pixel_embed.num_patches
        new_patch = self.pixel_embed.new_patch_size
        num_pixel = new_patch[0] * new_patch[1]
        self.norm1_proj = nn.LayerNorm(num_pixel * inner_dim)
        self.proj = nn.Linear(num_pixel * inner_dim, embed_dim)
        self.norm2_proj = nn.LayerNorm(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, new_patch[0], new_patch[1]))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            TntBlock(inner_dim, embed_dim, num_pixel, num_heads_inner, num_heads_outer, mlp_ratio, qkv_bias,
                     proj_drop_rate, attn_drop_rate, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for the tokens, position embeddings and linear layers."""
        for p in (self.cls_token, self.patch_pos, self.pixel_pos):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"patch_pos", "pixel_pos", "cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: TntPool | None = None, zero_init: bool = False) -> None:
        """A fresh head for ``num_classes`` outputs (``zero_init``: all zeros, the ViT paper's fine-tuning head)."""
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = _new_head(self.num_features, num_classes, zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel tokens [B·N, pixels, inner_dim], [class] + patch tokens [B, 1 + N, D])."""
        b = x.shape[0]
        pixel_embed = self.pixel_embed(x, self.pixel_pos)
        patch_embed = self.norm2_proj(self.proj(self.norm1_proj(pixel_embed.reshape(b, self.num_patches, -1))))
        patch_embed = torch.cat([self.cls_token.expand(b, -1, -1), patch_embed], dim=1)
        return pixel_embed, self.pos_drop(patch_embed + self.patch_pos)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalised [class] + patch tokens [B, 1 + N, D]."""
        pixel_embed, patch_embed = self._embed(x)
        for block in self.blocks:
            pixel_embed, patch_embed = block(pixel_embed, patch_embed)
        return self.norm(patch_embed)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: Literal["NCHW", "NLC"] = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The patch tokens after the chosen blocks (timm's contract): [B, D, H/P, W/P] maps for "NCHW",
        [B, N, D] for "NLC", the [class] token left out; ``norm`` passes them through the final norm.
        Unless ``intermediates_only``, the final features (``forward_features``) come first."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        pixel_embed, patch_embed = self._embed(x)
        gh, gw = self.pixel_embed.grid_size
        intermediates = []
        for i, block in enumerate(self.blocks):
            if intermediates_only and i > last:
                break
            pixel_embed, patch_embed = block(pixel_embed, patch_embed)
            if i in take:
                tokens = (self.norm(patch_embed) if norm else patch_embed)[:, self.num_prefix_tokens:]
                intermediates.append(tokens if output_fmt == "NLC"
                                     else tokens.reshape(x.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous())
        return intermediates if intermediates_only else (self.norm(patch_embed), intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> None:
    if global_pool not in ("token", "avg", ""):
        raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")


def _new_head(features: int, num_classes: int, zero_init: bool) -> nn.Module:
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(features, num_classes)
    if zero_init:
        nn.init.zeros_(head.weight)
    else:
        nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


# --- registry: timm's TNTs, and one for 28x28 grayscale --------------------------------------
register_model("tnt_s_patch16_224", TNT, "TNT-S: 16x16 patches of 4x4 pixel tokens (inner D24), outer D384 x 12",
               patch_size=16, embed_dim=384, inner_dim=24, depth=12, num_heads_outer=6, qkv_bias=False)
register_model("tnt_b_patch16_224", TNT, "TNT-B: 16x16 patches of 4x4 pixel tokens (inner D40), outer D640 x 12",
               patch_size=16, embed_dim=640, inner_dim=40, depth=12, num_heads_outer=10, qkv_bias=False)
register_model("tnt_mini_patch4_28", TNT,
               "TNT for 28x28 grayscale: 7x7 patches of 4x4 one-pixel tokens (inner D16), outer D128 x 4",
               img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, inner_dim=16, depth=4,
               num_heads_inner=2, num_heads_outer=4, mlp_ratio=2.0, first_stride=1)
