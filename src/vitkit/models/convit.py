"""ConViT (d'Ascoli et al., 2021), with timm's names (``timm.models.convit``).

A soft convolutional inductive bias: the first ``local_up_to_layer`` blocks use gated
positional self-attention (GPSA), which mixes content attention softmax(QKᵀ/√d) with a
positional attention softmax(r_ij · v_pos) over the patches' relative offsets r_ij. Each
head's gate σ(λ) starts near the positional side, with the heads initialised as the
offsets of a convolution's kernel (``local_init``), and learns how far to leave it. The
[class] token joins only after the GPSA blocks (they attend over patches by position),
and the remaining blocks are plain self-attention. ``embed_dim`` is per head: the model's
width is ``embed_dim * num_heads``, as in timm.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from .layers import (Attention, AttentionHook, Block, PatchEmbed, PatchFormat, feature_take_indices, init_linears,
                     new_head, patch_maps, to_2tuple)
from .registry import register_model
from .spec import record_change

POOLS = ("token", "avg", "")


def relative_indices(grid: tuple[int, int]) -> torch.Tensor:
    """[1, N, N, 3] for the patches of a grid, row by row: (dx, dy, dx² + dy²) from query i to key j."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    dx = xs.flatten()[None, :] - xs.flatten()[:, None]
    dy = ys.flatten()[None, :] - ys.flatten()[:, None]
    return torch.stack((dx, dy, dx ** 2 + dy ** 2), dim=-1).float()[None]


class GPSA(nn.Module):
    """Gated positional self-attention over the patch tokens of a ``grid_size`` grid.

    attn = (1 − σ(λ_h))·softmax(QKᵀ/√d) + σ(λ_h)·softmax(pos_proj(r)), rows renormalised;
    ``attn_hook`` gets this gated mixture [B, heads, N, N], the weights the values are averaged with.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, locality_strength: float = 1.0, grid_size: tuple[int, int] = (14, 14)):
        super().__init__()
        self.num_heads = num_heads
        self.dim = dim
        self.scale = (dim // num_heads) ** -0.5
        self.locality_strength = locality_strength
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel_indices", relative_indices(to_2tuple(grid_size)), persistent=False)
        self.attn_hook: AttentionHook | None = None

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """``queries=m``: only the first m tokens attend (to all n); the output is [B, m, D]."""
        b, n, c = x.shape
        attn = self.attention(x)[:, :, :queries]
        if self.attn_hook is not None:
            self.attn_hook(self, attn)
        v = self.v(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, attn.shape[2], c)
        return self.proj_drop(self.proj(x))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gated attention probabilities [B, heads, N, N]."""
        b, n, c = x.shape
        if n != self.rel_indices.shape[1]:
            raise ValueError(f"GPSA was built for {self.rel_indices.shape[1]} patches, got {n} tokens")
        q, k = self.qk(x).reshape(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        pos_score = self.pos_proj(self.rel_indices.to(x.dtype)).permute(0, 3, 1, 2).softmax(dim=-1)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        attn = (1.0 - gate) * patch_score + gate * pos_score
        return attn / attn.sum(dim=-1, keepdim=True)

    @torch.no_grad()
    def local_init(self) -> None:
        """Start as a convolution: values pass unchanged, and head h attends around the offset δ_h of a
        √heads x √heads kernel, -α‖δ − r‖² up to a constant, with α = ``locality_strength``."""
        self.v.weight.copy_(torch.eye(self.dim))
        kernel = int(self.num_heads ** 0.5)
        center = (kernel - 1) / 2 if kernel % 2 == 0 else kernel // 2
        for h1 in range(kernel):
            for h2 in range(kernel):
                head = h1 + kernel * h2
                self.pos_proj.weight[head] = torch.tensor([2.0 * (h2 - center), 2.0 * (h1 - center), -1.0])
        self.pos_proj.weight.mul_(self.locality_strength)


class ConVit(nn.Module):
    """ConViT. Keyword names match ``timm.models.convit.ConVit`` (``embed_dim`` per head); ``norm_eps``
    stands for timm's ``norm_layer``; ``weight_init="skip"`` leaves parameters for loading."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, local_up_to_layer: int = 3, locality_strength: float = 1.0,
                 use_pos_embed: bool = True, norm_eps: float = 1e-6, weight_init: str = ""):
        super().__init__()
        self.global_pool = _check_pool(global_pool)
        embed_dim *= num_heads
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.local_up_to_layer = local_up_to_layer
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim)) if use_pos_embed \
            else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        gpsa = partial(GPSA, locality_strength=locality_strength, grid_size=self.patch_embed.grid_size)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear over depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, None, proj_drop_rate, attn_drop_rate, rate, norm_eps,
                  gpsa if i < local_up_to_layer else Attention)
            for i, rate in enumerate(rates)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = new_head(embed_dim, num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for linears and embeddings, then each GPSA's ``local_init``."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linears(self)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

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

    def _run_blocks(self, x: torch.Tensor, take: Sequence[int] = (), norm: bool = False
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> final tokens [B, 1 + patches, D] (not normalised), and the patch tokens of blocks ``take``."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x, taken = self.pos_drop(x), []
        for i, block in enumerate(self.blocks):
            if i == self.local_up_to_layer:
                x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            x = block(x)
            if i in take:
                taken.append((self.norm(x) if norm else x)[:, int(i >= self.local_up_to_layer):])
        return x, taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens [B, 1 + patches, D]."""
        return self.norm(self._run_blocks(x)[0])

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: PatchFormat = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the blocks ``indices`` picks (see ``VisionTransformer``'s), [class] dropped."""
        x, taken = self._run_blocks(x, feature_take_indices(len(self.blocks), indices), norm)
        maps = [patch_maps(t, self.patch_embed.grid_size, output_fmt) for t in taken]
        return maps if intermediates_only else (self.norm(x), maps)

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


# --- registry: timm's ConViTs (10 GPSA blocks of 12; width 48 per head), and one for 28 px ------------
for _size, _heads in (("tiny", 4), ("small", 9), ("base", 16)):
    register_model(f"convit_{_size}", ConVit, f"ConViT-{_size[0].upper()} at 224px: {_heads} heads of width 48, "
                   "10 GPSA blocks + 2 self-attention", local_up_to_layer=10, locality_strength=1.0, embed_dim=48,
                   num_heads=_heads)
register_model("convit_mini_patch4_28", ConVit,
               "ConViT for 28x28 grayscale, patch 4: vit_mini's width (4 heads of 32), 4 GPSA + 2 self-attention blocks",
               img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=6, num_heads=4,
               mlp_ratio=2.0, local_up_to_layer=4)
