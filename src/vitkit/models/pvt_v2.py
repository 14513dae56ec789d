"""Pyramid Vision Transformer v2 (Wang et al., 2021/22), with timm's names (``PyramidVisionTransformerV2``).

What changes against ViT: four stages at strides 4, 8, 16, 32, each entered through an overlapping
patch embedding (a strided conv whose kernel is wider than its stride, so neighbouring patches share
pixels). Attention keeps a query per token but computes keys and values from a map shrunk by a
strided conv (spatial-reduction attention, ``sr_ratio``), so high-resolution stages stay affordable;
``linear=True`` (the ``_li`` models) pools keys and values to 7×7 instead. The MLP has a 3×3
depthwise conv between its two linear layers; that conv gives the tokens their position, so there is
no position embedding at all and any input size works. No [class] token: the head averages the last map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionHook, DropPath, to_2tuple
from .registry import register_model
from .spec import record_change
from .stages import check_feature_format, drop_path_rates, feature_take_indices, nchw_as, new_classifier

Size = tuple[int, int]


class OverlapPatchEmbed(nn.Module):
    """Conv with kernel > stride (padding kernel // 2) then LayerNorm: [B, C, H, W] -> [B, H/s, W/s, D]."""

    def __init__(self, patch_size: int = 7, stride: int = 4, in_chans: int = 3, embed_dim: int = 768,
                 img_size: int | Size | None = None):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        if max(self.patch_size) <= stride:
            raise ValueError(f"an overlapping patch embedding needs patch_size > stride, got {patch_size}, {stride}")
        self.in_chans, self.stride = in_chans, stride
        self.img_size = to_2tuple(img_size or 224)  # any size works; this is the one the model is meant for
        self.grid_size = (-(-self.img_size[0] // stride), -(-self.img_size[1] // stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride,
                              padding=(self.patch_size[0] // 2, self.patch_size[1] // 2))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SpatialReductionAttention(nn.Module):
    """Queries from every token, keys and values from a reduced map: ``sr`` (a conv, kernel = stride =
    ``sr_ratio``) then LayerNorm, or with ``linear_attn`` a 7×7 average pool, 1×1 conv, LayerNorm, GELU.

    timm calls it ``Attention``; parameter names are timm's (``q``, ``kv``, ``sr``, ``norm``, ``proj``).
    ``attn_hook``, when set, gets the probabilities [B, heads, N, N_reduced] (and forces the explicit path).
    """

    def __init__(self, dim: int, num_heads: int = 8, sr_ratio: int = 1, linear_attn: bool = False,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool = nn.AdaptiveAvgPool2d(7) if linear_attn else None
        self.act = nn.GELU() if linear_attn else None
        reduces = linear_attn or sr_ratio > 1
        kernel = 1 if linear_attn else sr_ratio
        self.sr = nn.Conv2d(dim, dim, kernel_size=kernel, stride=kernel) if reduces else None
        self.norm = nn.LayerNorm(dim) if reduces else None
        self.attn_hook: AttentionHook | None = None

    def reduced(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        """The tokens keys and values are computed from: [B, N, C] -> [B, N', C]."""
        if self.sr is None:
            return x
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, size[0], size[1])
        x = self.sr(self.pool(x) if self.pool is not None else x).flatten(2).transpose(1, 2)
        x = self.norm(x)
        return self.act(x) if self.act is not None else x

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(self.reduced(x, size)).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.attn_hook is None and not (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()):
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:  # explicit on a CPU with gradients: faster backward there (see layers.Attention)
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            if self.attn_hook is not None:
                self.attn_hook(self, attn)
            x = self.attn_drop(attn) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class MlpWithDepthwiseConv(nn.Module):
    """fc1 -> (ReLU, ``_li`` models) -> 3×3 depthwise conv on the token map -> GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, extra_relu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, groups=hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        x = self.relu(x.transpose(1, 2).reshape(b, c, size[0], size[1]))
        x = self.drop(self.act(self.dwconv(x).flatten(2).transpose(1, 2)))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-LN block over [B, N, C] tokens of an H×W map (the size both the reduction and the conv need)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sr_ratio: int = 1, linear_attn: bool = False,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, linear_attn, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio), proj_drop, extra_relu=linear_attn)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        return x + self.drop_path2(self.mlp(self.norm2(x), size))


class PyramidVisionTransformerStage(nn.Module):
    """[B, C, H, W] -> (overlapping 3×3/2 patch embedding, all stages but the first) -> blocks -> LayerNorm
    -> [B, D, H', W']."""

    def __init__(self, dim: int, dim_out: int, depth: int, downsample: bool = True, num_heads: int = 8,
                 sr_ratio: int = 1, linear_attn: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: Sequence[float] | float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        if not downsample and dim != dim_out:
            raise ValueError(f"a stage without downsampling keeps its width: dim {dim} != dim_out {dim_out}")
        self.downsample = OverlapPatchEmbed(3, 2, dim, dim_out) if downsample else None
        rates = drop_path if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            Block(dim_out, num_heads, mlp_ratio, sr_ratio, linear_attn, qkv_bias, proj_drop, attn_drop, rates[i],
                  norm_eps)
            for i in range(depth)])
        self.norm = nn.LayerNorm(dim_out, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x) if self.downsample is not None else x.permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x, (h, w))
        return self.norm(x).reshape(b, h, w, c).permute(0, 3, 1, 2)


class PyramidVisionTransformerV2(nn.Module):
    """PVT v2. Keyword names match timm's ``PyramidVisionTransformerV2`` (``norm_layer`` aside: the blocks'
    and stages' LayerNorms take ``norm_eps``, 1e-6 as timm's ``LayerNorm``; the patch embeddings' and the
    reductions' keep torch's 1e-5, as timm's do).

    ``img_size`` only records the size the model is meant for (it takes any). ``drop_rate`` is the head's
    dropout, ``proj_drop_rate`` the blocks'. ``forward_features`` returns the last map [B, D, H/32, W/32].
    """

    def __init__(self, img_size: int | Size | None = None, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", depths: Sequence[int] = (3, 4, 6, 3),
                 embed_dims: Sequence[int] = (64, 128, 256, 512), num_heads: int | Sequence[int] = (1, 2, 4, 8),
                 sr_ratios: int | Sequence[int] = (8, 4, 2, 1),
                 mlp_ratios: float | Sequence[float] = (8.0, 8.0, 4.0, 4.0),
                 qkv_bias: bool = True, linear: bool = False, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 weight_init: str = ""):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init must be '' (timm's) or 'skip', got {weight_init!r}")
        stages = len(depths)
        heads, srs, ratios = (_per_stage(v, stages, name) for v, name in
                              ((num_heads, "num_heads"), (sr_ratios, "sr_ratios"), (mlp_ratios, "mlp_ratios")))
        if len(embed_dims) != stages:
            raise ValueError(f"embed_dims needs one entry per stage ({stages}), got {embed_dims}")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.depths = tuple(depths)
        self.embed_dim = embed_dims[0]
        self.num_features = embed_dims[-1]
        self.patch_embed = OverlapPatchEmbed(7, 4, in_chans, embed_dims[0], img_size)
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList([
            PyramidVisionTransformerStage(embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], i > 0, heads[i], srs[i],
                                          linear, ratios[i], qkv_bias, proj_drop_rate, attn_drop_rate, rates[i],
                                          norm_eps)
            for i in range(stages)])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = new_classifier(self.num_features, num_classes)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for linear layers, He normal (fan-out) for convs, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # no position embedding or token; norms and biases are 1-D (the optimiser spares those)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, zero_init: bool = False) -> None:
        """A new head for ``num_classes`` outputs (``zero_init``: the ViT paper's fine-tuning head)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_classifier(self.num_features, num_classes, zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] (any size) -> the last stage's normalised map [B, D, H/32, W/32]."""
        x = self.patch_embed(x).permute(0, 3, 1, 2)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x.mean(dim=(-1, -2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The chosen stages' output maps (each stage ends in its own LayerNorm, so ``norm`` changes
        nothing), and unless ``intermediates_only`` the ``forward_features`` output too, as timm's."""
        check_feature_format(output_fmt)
        take, last = feature_take_indices(len(self.stages), indices)
        x = self.patch_embed(x).permute(0, 3, 1, 2)
        maps = []
        for i, stage in enumerate(self.stages[:last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                maps.append(nchw_as(x, output_fmt))
        return maps if intermediates_only else (x, maps)


def _per_stage(value: float | Sequence[float], stages: int, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) else [value] * stages
    if len(values) != stages:
        raise ValueError(f"{name} needs one entry per stage ({stages}), got {value}")
    return values


# --- registry: timm's PVT v2 models, and a small one for 28x28 grayscale -----------------------------
_B_DIMS = (64, 128, 320, 512)
_VARIANTS = {  # name: (depths, embed_dims, extra keyword arguments)
    "pvt_v2_b0": ((2, 2, 2, 2), (32, 64, 160, 256), {}),
    "pvt_v2_b1": ((2, 2, 2, 2), _B_DIMS, {}),
    "pvt_v2_b2": ((3, 4, 6, 3), _B_DIMS, {}),
    "pvt_v2_b3": ((3, 4, 18, 3), _B_DIMS, {}),
    "pvt_v2_b4": ((3, 8, 27, 3), _B_DIMS, {}),
    "pvt_v2_b5": ((3, 6, 40, 3), _B_DIMS, {"mlp_ratios": (4.0, 4.0, 4.0, 4.0)}),
    "pvt_v2_b2_li": ((3, 4, 6, 3), _B_DIMS, {"linear": True}),
}
for _name, (_depths, _dims, _extra) in _VARIANTS.items():
    register_model(_name, PyramidVisionTransformerV2,
                   f"PVT v2-{_name[7:].upper()} at 224px" + (" (linear spatial reduction)" if "li" in _name else ""),
                   img_size=224, depths=_depths, embed_dims=_dims, num_heads=(1, 2, 5, 8), **_extra)
register_model("pvt_v2_mini_28", PyramidVisionTransformerV2,
               "PVT v2 for 28x28 grayscale: stride-4 overlapping stem (7x7 tokens), 3 stages D48/96/192",
               img_size=28, in_chans=1, num_classes=10, depths=(2, 2, 2), embed_dims=(48, 96, 192),
               num_heads=(1, 2, 4), sr_ratios=(2, 1, 1), mlp_ratios=(4.0, 4.0, 4.0))
