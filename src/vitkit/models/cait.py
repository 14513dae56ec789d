"""CaiT (Touvron et al., 2021, "Going deeper with Image Transformers"), with timm's names (``timm.models.cait``).

Two changes let ViTs go deeper. LayerScale multiplies each residual branch by a learned
per-channel factor that starts small (``init_values``), so a deep stack starts near the
identity. And the [class] token is kept out of the patches' self-attention: the patch
tokens run through ``depth`` self-attention blocks alone, then ``depth_token_only``
class-attention blocks update only [class], which attends to itself and the (now fixed)
patches. The self-attention is talking-heads attention (Shazeer et al., 2020): learned
head-mixing linear maps before (``proj_l``) and after (``proj_w``) the softmax.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import (AttentionHook, DropPath, Mlp, PatchEmbed, PatchFormat, feature_take_indices, init_linears,
                     new_head, patch_maps)
from .registry import register_model
from .spec import record_change

POOLS = ("token", "avg", "")


class TalkingHeadAttn(nn.Module):
    """Self-attention whose heads exchange information: the logits and the probabilities are each mixed
    across heads by a heads×heads linear map. The mixed weights are no longer distributions, so no
    ``attn_hook``: explain reads CaiT through its class attention."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
        attn = self.attn_drop(self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class ClassAttn(nn.Module):
    """Attention of the [class] token (the first) over all tokens; returns its update [B, 1, D].

    ``attn_hook`` gets that one query's probabilities [B, heads, 1, N] (explain reads the other
    rows as tokens that keep themselves)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_hook: AttentionHook | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(self.q(x[:, :1])), self._heads(self.k(x)), self._heads(self.v(x))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        if self.attn_hook is not None:
            self.attn_hook(self, attn)
        x_cls = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, 1, c)
        return self.proj_drop(self.proj(x_cls))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, heads, N, D / heads]."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)


class LayerScaleBlock(nn.Module):
    """Pre-LN block with LayerScale (``gamma_1``, ``gamma_2``, timm's names) and talking-heads attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float = 1e-4,
                 norm_eps: float = 1e-6, attn_layer: type[nn.Module] = TalkingHeadAttn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class LayerScaleBlockClassAttn(LayerScaleBlock):
    """The same block around class attention: only [class] is updated; the patches are read, not changed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, attn_layer=ClassAttn, **kwargs)

    def forward(self, x: torch.Tensor, x_cls: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x_cls = x_cls + self.drop_path(self.gamma_1 * self.attn(self.norm1(torch.cat((x_cls, x), dim=1))))
        return x_cls + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x_cls)))


class Cait(nn.Module):
    """CaiT. Keyword names match ``timm.models.cait.Cait`` (``init_values`` is LayerScale's start,
    ``depth_token_only`` the class-attention blocks, ``mlp_ratio_token_only`` their MLP width);
    ``norm_eps`` stands for timm's ``norm_layer``; ``weight_init="skip"`` leaves parameters for loading."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, init_values: float = 1e-4, depth_token_only: int = 2,
                 mlp_ratio_token_only: float = 4.0, norm_eps: float = 1e-6, weight_init: str = ""):
        super().__init__()
        _check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        common = dict(qkv_bias=qkv_bias, init_values=init_values, norm_eps=norm_eps)
        self.blocks = nn.Sequential(*[  # timm: the same drop-path rate at every depth
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                            drop_path=drop_path_rate, **common) for _ in range(depth)])
        self.blocks_token_only = nn.ModuleList([
            LayerScaleBlockClassAttn(embed_dim, num_heads, mlp_ratio_token_only, **common)
            for _ in range(depth_token_only)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = new_head(embed_dim, num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for linears and both embeddings, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linears(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, zero_init: bool = False) -> None:
        """A new head for ``num_classes`` outputs (zero weights: the ViT paper's fine-tuning head)."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head = new_head(self.num_features, num_classes, zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch tokens with position embeddings [B, N, D]; [class] joins later."""
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def class_token(self, x: torch.Tensor) -> torch.Tensor:
        """The [class] token after the class-attention blocks have read the patch tokens ``x``."""
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.blocks_token_only:
            cls = block(x, cls)
        return cls

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens [B, 1 + patches, D]: [class], then the patches."""
        x = self.blocks(self.forward_patches(x))
        return self.norm(torch.cat((self.class_token(x), x), dim=1))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: PatchFormat = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the self-attention blocks ``indices`` picks (see ``VisionTransformer``'s)."""
        take = feature_take_indices(len(self.blocks), indices)
        x, maps = self.forward_patches(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                maps.append(patch_maps(self.norm(x) if norm else x, self.patch_embed.grid_size, output_fmt))
        if intermediates_only:
            return maps
        return self.norm(torch.cat((self.class_token(x), x), dim=1)), maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> str:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, POOLS))}, got {global_pool!r}")
    return global_pool


# --- registry: timm's CaiTs, and one for 28 px --------------------------------------------------------
_SIZES = {"xxs": (192, 4), "xs": (288, 6), "s": (384, 8), "m": (768, 16)}
_TIMM_CAITS = [  # (size, depth, resolution, LayerScale's initial value, as timm's)
    ("xxs", 24, 224, 1e-5), ("xxs", 24, 384, 1e-5), ("xxs", 36, 224, 1e-5), ("xxs", 36, 384, 1e-5),
    ("xs", 24, 384, 1e-5), ("s", 24, 224, 1e-5), ("s", 24, 384, 1e-5), ("s", 36, 384, 1e-6),
    ("m", 36, 384, 1e-6), ("m", 48, 448, 1e-6)]
for _size, _depth, _res, _init in _TIMM_CAITS:
    _dim, _heads = _SIZES[_size]
    register_model(f"cait_{_size}{_depth}_{_res}", Cait,
                   f"CaiT-{_size.upper()}{_depth} at {_res}px: {_depth} talking-heads blocks + 2 class-attention",
                   img_size=_res, patch_size=16, embed_dim=_dim, depth=_depth, num_heads=_heads, init_values=_init)
register_model("cait_mini_patch4_28", Cait,
               "CaiT for 28x28 grayscale, patch 4: vit_mini's width, 6 + 2 class-attention blocks, LayerScale 0.1",
               img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
               mlp_ratio=2.0, mlp_ratio_token_only=2.0, init_values=0.1)
