"""CrossViT (Chen et al., 2021), with timm's names (``timm.models.crossvit``).

Two ViT branches see the image cut at two patch sizes: a small-patch branch (fine, many
tokens, narrow) and a large-patch one (coarse, few tokens, wide). After each stage of
per-branch blocks, the branches exchange information through their [class] tokens only:
each branch's [class] token is projected to the other's width, attends (as the only query,
so the cost stays linear in tokens) over the other branch's patch tokens, and is projected
back. The two heads' logits are averaged. timm's ``*_240`` models run the large-patch
branch on the image resized by ``img_scale`` (224 of 240 px).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (Block, DropPath, PatchEmbed, PatchFormat, feature_take_indices, init_linears, new_head,
                     patch_maps, to_2tuple)
from .registry import register_model
from .spec import record_change

POOLS = ("token", "avg")
BranchMaps = tuple[torch.Tensor, ...]  # one feature map per branch


class CrossAttention(nn.Module):
    """Attention of the first token (a [class] token from the other branch) over all tokens: [B, 1, D]."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(self.wq(x[:, :1])), self._heads(self.wk(x)), self._heads(self.wv(x))
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, 1, c)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, heads, N, D / heads]."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention with a residual on the query token; no MLP (timm's ``CrossAttentionBlock``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = CrossAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x)))


def _projection(dim_in: int, dim_out: int, norm_eps: float) -> nn.Sequential:
    """LayerNorm -> GELU -> Linear, from one branch's width to the other's."""
    return nn.Sequential(nn.LayerNorm(dim_in, eps=norm_eps), nn.GELU(), nn.Linear(dim_in, dim_out))


class MultiScaleBlock(nn.Module):
    """One stage: ``depth[b]`` Transformer blocks in each branch b, then [class]-token fusion.

    ``fusion[b]`` lets branch b's [class] token (projected by ``projs[b]`` to the next branch's
    width) attend over the next branch's patches; ``revert_projs[b]`` brings it back. With
    ``depth[-1] == 0`` each fusion is a single cross-attention block, as timm's layout has it.
    """

    def __init__(self, dim: Sequence[int], depth: Sequence[int], num_heads: Sequence[int],
                 mlp_ratio: Sequence[float], qkv_bias: bool = False, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = (0.0,), norm_eps: float = 1e-6):
        super().__init__()
        n = self.num_branches = len(dim)
        self.blocks = nn.ModuleList([
            nn.Sequential(*[Block(dim[b], num_heads[b], mlp_ratio[b], qkv_bias, None, proj_drop, attn_drop,
                                  drop_path[i], norm_eps) for i in range(depth[b])])
            for b in range(n)])
        self.projs = nn.ModuleList([_projection(dim[b], dim[(b + 1) % n], norm_eps) for b in range(n)])

        def fusion(b: int) -> nn.Module:
            nxt = (b + 1) % n
            blocks = [CrossAttentionBlock(dim[nxt], num_heads[nxt], qkv_bias, proj_drop, attn_drop, drop_path[-1],
                                          norm_eps) for _ in range(max(depth[-1], 1))]
            return blocks[0] if depth[-1] == 0 else nn.Sequential(*blocks)
        self.fusion = nn.ModuleList([fusion(b) for b in range(n)])
        self.revert_projs = nn.ModuleList([_projection(dim[(b + 1) % n], dim[b], norm_eps) for b in range(n)])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [block(x) for block, x in zip(self.blocks, xs)]
        outs = []
        for b, (proj, fusion, revert) in enumerate(zip(self.projs, self.fusion, self.revert_projs)):
            other = xs[(b + 1) % self.num_branches]
            cls = fusion(torch.cat((proj(xs[b][:, :1]), other[:, 1:]), dim=1))
            outs.append(torch.cat((revert(cls), xs[b][:, 1:]), dim=1))
        return outs


class BranchEmbeds(nn.ModuleList):
    """The branches' patch embeddings (``patch_embed.0``, ``patch_embed.1``: timm's names). ``in_chans``,
    ``img_size`` (the model's input) and ``num_patches`` (the largest branch's) tell vitkit's tools the
    input geometry, as a single ``PatchEmbed`` would; it has no single ``patch_size``."""

    def __init__(self, embeds: list[PatchEmbed], in_chans: int, img_size: tuple[int, int]):
        super().__init__(embeds)
        self.in_chans, self.img_size = in_chans, img_size
        self.num_patches = max(e.num_patches for e in embeds)


class CrossVit(nn.Module):
    """CrossViT. Keyword names match ``timm.models.crossvit.CrossVit``: per-branch ``patch_size``,
    ``embed_dim``, ``num_heads`` and ``img_scale``; ``depth`` per stage, each (branch blocks..., fusion
    blocks); ``mlp_ratio`` per branch. ``norm_eps`` stands for timm's ``norm_layer``; ``weight_init="skip"``
    leaves parameters for loading. timm's ``multi_conv`` stems (the "dagger" models) are not implemented."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int | tuple[int, int] = 224, img_scale: float | Sequence[float] = (1.0, 1.0),
                 patch_size: Sequence[int] = (8, 16), in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: Sequence[int] = (192, 384), depth: Sequence[Sequence[int]] = ((1, 3, 1),) * 3,
                 num_heads: Sequence[int] = (6, 12), mlp_ratio: Sequence[float] = (2.0, 2.0, 4.0),
                 crop_scale: bool = False, qkv_bias: bool = True, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "token", norm_eps: float = 1e-6, weight_init: str = ""):
        super().__init__()
        self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.img_size = to_2tuple(img_size)
        self.in_chans = in_chans
        scales = (img_scale,) * len(patch_size) if isinstance(img_scale, (int, float)) else tuple(img_scale)
        self.img_size_scaled = [tuple(int(side * s) for side in self.img_size) for s in scales]
        self.crop_scale = crop_scale
        self.num_branches = len(patch_size)
        self.embed_dim = tuple(embed_dim)
        self.num_features = sum(embed_dim)
        self.patch_embed = BranchEmbeds([PatchEmbed(size, p, in_chans, d) for size, p, d in
                                         zip(self.img_size_scaled, patch_size, embed_dim)], in_chans, self.img_size)
        for b, (embed, d) in enumerate(zip(self.patch_embed, embed_dim)):  # timm's names: pos_embed_0, cls_token_0
            setattr(self, f"pos_embed_{b}", nn.Parameter(torch.zeros(1, 1 + embed.num_patches, d)))
            setattr(self, f"cls_token_{b}", nn.Parameter(torch.zeros(1, 1, d)))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        stage_depths = [max(cfg[:-1]) + cfg[-1] for cfg in depth]
        total = sum(sum(cfg[-2:]) for cfg in depth)  # timm's count for the drop-path schedule
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(stage_depths[:i]) for i in range(len(depth))]
        self.blocks = nn.ModuleList([
            MultiScaleBlock(embed_dim, cfg, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate,
                            rates[start:start + n] or [0.0], norm_eps)
            for cfg, start, n in zip(depth, starts, stage_depths)])
        self.norm = nn.ModuleList([nn.LayerNorm(d, eps=norm_eps) for d in embed_dim])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._new_heads(num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for linears and both branches' embeddings, zero biases."""
        for b in range(self.num_branches):
            nn.init.trunc_normal_(getattr(self, f"pos_embed_{b}"), std=0.02)
            nn.init.trunc_normal_(getattr(self, f"cls_token_{b}"), std=0.02)
        init_linears(self)

    def _new_heads(self, num_classes: int, zero_init: bool = False) -> nn.ModuleList:
        return nn.ModuleList([new_head(d, num_classes, zero_init) for d in self.embed_dim])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"{name}_{b}" for b in range(self.num_branches) for name in ("pos_embed", "cls_token")}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, zero_init: bool = False) -> None:
        """New heads for ``num_classes`` outputs (zero weights: the ViT paper's fine-tuning head)."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head = self._new_heads(num_classes, zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def _scaled(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The image at a branch's size: centre-cropped with ``crop_scale``, else resized bicubically."""
        h, w = x.shape[-2:]
        if (h, w) == size:
            return x
        if self.crop_scale and size[0] <= h and size[1] <= w:
            top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
            return x[:, :, top:top + size[0], left:left + size[1]]
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> each branch's tokens [B, 1 + patches_b, D_b] with position embeddings."""
        xs = []
        for b, (embed, size) in enumerate(zip(self.patch_embed, self.img_size_scaled)):
            tokens = embed(self._scaled(x, size))
            cls = getattr(self, f"cls_token_{b}").expand(x.shape[0], -1, -1)
            xs.append(self.pos_drop(torch.cat((cls, tokens), dim=1) + getattr(self, f"pos_embed_{b}")))
        return xs

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> each branch's normalised tokens."""
        xs = self.embed(x)
        for stage in self.blocks:
            xs = stage(xs)
        return [norm(t) for norm, t in zip(self.norm, xs)]

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: PatchFormat = "NCHW", intermediates_only: bool = False
                              ) -> list[BranchMaps] | tuple[list[torch.Tensor], list[BranchMaps]]:
        """Per stage ``indices`` picks (see ``VisionTransformer``'s), a tuple of each branch's feature map
        ([class] dropped; the branches' grids differ); then ``forward_features``' tokens unless ``intermediates_only``."""
        take = feature_take_indices(len(self.blocks), indices)
        xs, maps = self.embed(x), []
        for i, stage in enumerate(self.blocks):
            xs = stage(xs)
            if i in take:
                maps.append(tuple(patch_maps((n(t) if norm else t)[:, 1:], e.grid_size, output_fmt)
                                  for n, t, e in zip(self.norm, xs, self.patch_embed)))
        return maps if intermediates_only else ([n(t) for n, t in zip(self.norm, xs)], maps)

    def forward_head(self, xs: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The mean of the branches' heads' logits; with ``pre_logits`` the branches' pooled features, concatenated."""
        pooled = [self.head_drop(t[:, 1:].mean(dim=1) if self.global_pool == "avg" else t[:, 0]) for t in xs]
        if pre_logits or self.num_classes <= 0:
            return torch.cat(pooled, dim=1)
        return torch.stack([head(p) for head, p in zip(self.head, pooled)]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> str:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, POOLS))}, got {global_pool!r}")
    return global_pool


# --- registry: timm's CrossViTs at 240 px (the large-patch branch sees 224 px), and one for 28 px -------
_TIMM_CROSSVITS = {  # embed_dim, blocks per branch in each of 3 stages, num_heads, MLP ratio
    "tiny": ((96, 192), 4, (3, 3), 4.0), "small": ((192, 384), 4, (6, 6), 4.0),
    "base": ((384, 768), 4, (12, 12), 4.0), "9": ((128, 256), 3, (4, 4), 3.0),
    "15": ((192, 384), 5, (6, 6), 3.0), "18": ((224, 448), 6, (7, 7), 3.0)}
for _name, (_dims, _blocks, _heads, _mlp) in _TIMM_CROSSVITS.items():
    register_model(f"crossvit_{_name}_240", CrossVit,
                   f"CrossViT-{_name.capitalize()} at 240px: patch 12 and 16 branches, widths {_dims[0]}/{_dims[1]}",
                   img_size=240, img_scale=(1.0, 224 / 240), patch_size=(12, 16), embed_dim=_dims,
                   depth=((1, _blocks, 0),) * 3, num_heads=_heads, mlp_ratio=(_mlp, _mlp, 1.0))
register_model("crossvit_mini_28", CrossVit,
               "CrossViT for 28x28 grayscale: patch 4 (width 64) and patch 7 (width 128) branches, 3 stages",
               img_size=28, patch_size=(4, 7), in_chans=1, num_classes=10, embed_dim=(64, 128),
               depth=((1, 2, 0),) * 3, num_heads=(4, 4), mlp_ratio=(2.0, 2.0, 1.0))
