"""LeViT (Graham et al. 2021), with timm's names (``timm.models.levit``).

A ViT built for inference speed, in a ConvNet's clothing: a stride-16 stem of four 3x3
convolutions replaces the patch embedding; the tokens then go through three stages whose
resolution halves between them (by an attention block whose queries are subsampled);
every linear layer is followed by BatchNorm instead of preceded by LayerNorm, so that at
inference the norm folds into the layer (:meth:`LinearNorm.fuse`, used by
``prepare_for_inference``); attention adds a learned per-head bias that depends only on
the offset between query and key positions, in place of position embeddings; MLPs are
2x wide and activations are hard-swish. Pooling is the mean over tokens.

timm's ``levit_*`` names build :class:`LevitDistilled` (a second, distillation head
whose logits are averaged with the class head's), as their weights were trained with
DeiT's distillation; ``distilled=False`` builds the plain :class:`Levit`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .features import feature_take_indices
from .fuse import fuse_bn_linear, fuse_conv_bn, fuse_linear_bn
from .layers import DropPath, to_2tuple
from .registry import register_model
from .spec import record_change

ACTIVATIONS: dict[str, type[nn.Module]] = {"hard_swish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU,
                                           "relu": nn.ReLU}
STEM_DEPTHS = {"s16": 4, "s8": 3, "s4": 2}  # stride-2 convolutions; 's4' is vitkit's, for 28 px images


class ConvNorm(nn.Module):
    """Conv2d (no bias) then BatchNorm2d; ``fuse()`` folds them into one Conv2d."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 bn_weight_init: float = 1.0):
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.linear, self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


class LinearNorm(nn.Module):
    """Linear (no bias) then BatchNorm over every token's channels; ``fuse()`` folds them into one Linear.
    ``bn_weight_init=0`` makes a residual branch start as zero."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def fuse(self) -> nn.Linear:
        return fuse_linear_bn(self.linear, self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    """The head: BatchNorm, dropout, Linear; ``fuse()`` folds the norm into the linear layer."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0, zero_init: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
        else:
            nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def fuse(self) -> nn.Linear:
        return fuse_bn_linear(self.bn, self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))


class Stem(nn.Sequential):
    """``depth`` 3x3 stride-2 ConvNorms with activations between, widths doubling up to ``out_chs``
    (timm's Stem16 for depth 4, Stem8 for 3)."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: type[nn.Module], depth: int = 4):
        super().__init__()
        self.stride = 2 ** depth
        widths = [out_chs // 2 ** (depth - 1 - i) for i in range(depth)]
        for i, width in enumerate(widths):
            self.add_module(f"conv{i + 1}", ConvNorm(in_chs, width, 3, stride=2, padding=1))
            if i < depth - 1:
                self.add_module(f"act{i + 1}", act_layer())
            in_chs = width


class Subsample(nn.Module):
    """Every ``stride``-th token of a [B, H·W, C] sequence in each direction (timm's ``Downsample``)."""

    def __init__(self, stride: int, resolution: tuple[int, int]):
        super().__init__()
        self.stride, self.resolution = stride, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.resolution[0], self.resolution[1], c)[:, ::self.stride, ::self.stride]
        return x.reshape(b, -1, c)


def _bias_index(resolution: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """[queries, keys] index into a per-offset bias table: |Δrow|·W + |Δcol| for each query on the
    stride grid and each key on the full grid (LeViT's attention bias depends only on that)."""
    h, w = resolution
    keys = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
    queries = torch.stack(torch.meshgrid(torch.arange(0, h, stride), torch.arange(0, w, stride),
                                         indexing="ij")).flatten(1)
    offset = (queries[:, :, None] - keys[:, None, :]).abs()
    return offset[0] * w + offset[1]


class _BiasedAttention(nn.Module):
    """Attention with LeViT's learned per-head, per-offset bias added to the scores."""

    key_dim: int
    num_heads: int

    def _init_bias(self, resolution: tuple[int, int], stride: int = 1) -> None:
        self.scale = self.key_dim ** -0.5
        self.attention_biases = nn.Parameter(torch.zeros(self.num_heads, resolution[0] * resolution[1]))
        self.register_buffer("attention_bias_idxs", _bias_index(resolution, stride), persistent=False)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d + B)V for [B, heads, tokens, dim] inputs -> [B, queries, heads·value dim]."""
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return x.transpose(1, 2).flatten(2)


class LevitAttention(_BiasedAttention):
    """LeViT's self-attention (timm's ``levit.Attention``): q, k, v from one LinearNorm, values
    ``attn_ratio`` times as wide as keys, an activation before the output projection."""

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4.0,
                 resolution: tuple[int, int] = (14, 14), act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, int(attn_ratio * key_dim)
        self.qkv = LinearNorm(dim, (self.val_dim + 2 * key_dim) * num_heads)
        self.proj = nn.Sequential(OrderedDict([("act", act_layer()),
                                               ("ln", LinearNorm(self.val_dim * num_heads, dim, bn_weight_init=0))]))
        self._init_bias(resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        return self.proj(self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))


class AttentionDownsample(_BiasedAttention):
    """Attention whose queries come from every other token: halves the resolution and widens the tokens."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 2.0,
                 stride: int = 2, resolution: tuple[int, int] = (14, 14), act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, int(attn_ratio * key_dim)
        self.kv = LinearNorm(in_dim, (self.val_dim + key_dim) * num_heads)
        self.q = nn.Sequential(OrderedDict([("down", Subsample(stride, resolution)),
                                            ("ln", LinearNorm(in_dim, key_dim * num_heads))]))
        self.proj = nn.Sequential(OrderedDict([("act", act_layer()),
                                               ("ln", LinearNorm(self.val_dim * num_heads, out_dim))]))
        self._init_bias(resolution, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        k, v = self.kv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
        q = self.q(x).view(b, -1, self.num_heads, self.key_dim)
        return self.proj(self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))


class LevitMlp(nn.Module):
    """LinearNorm, activation, LinearNorm (whose BatchNorm starts at zero: the branch starts as nothing)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.Hardswish,
                 drop: float = 0.0):
        super().__init__()
        self.ln1 = LinearNorm(in_features, hidden_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.ln2 = LinearNorm(hidden_features, in_features, bn_weight_init=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.drop(self.act(self.ln1(x))))


class LevitDownsample(nn.Module):
    """Between stages: attention downsampling (no residual: the shape changes), then a residual MLP."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, act_layer: type[nn.Module],
                 attn_act_layer: type[nn.Module], resolution: tuple[int, int], drop_path: float = 0.0):
        super().__init__()
        self.attn_downsample = AttentionDownsample(in_dim, out_dim, key_dim, num_heads, attn_ratio=4.0,
                                                   resolution=resolution, act_layer=attn_act_layer)
        self.mlp = LevitMlp(out_dim, out_dim * 2, act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_downsample(x)
        return x + self.drop_path(self.mlp(x))


class LevitBlock(nn.Module):
    """x + attn(x), then x + mlp(x): no LayerNorm, the BatchNorms inside each branch normalise."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, mlp_ratio: float,
                 resolution: tuple[int, int], act_layer: type[nn.Module], attn_act_layer: type[nn.Module],
                 drop_path: float = 0.0):
        super().__init__()
        self.attn = LevitAttention(dim, key_dim, num_heads, attn_ratio, resolution, attn_act_layer)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = LevitMlp(dim, int(dim * mlp_ratio), act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(x))
        return x + self.drop_path2(self.mlp(x))


class LevitStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, depth: int, num_heads: int, attn_ratio: float,
                 mlp_ratio: float, act_layer: type[nn.Module], attn_act_layer: type[nn.Module],
                 resolution: tuple[int, int], downsample: bool, drop_path: float = 0.0):
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if downsample:
            self.downsample = LevitDownsample(in_dim, out_dim, key_dim, in_dim // key_dim, act_layer, attn_act_layer,
                                              resolution, drop_path)
            resolution = tuple((r - 1) // 2 + 1 for r in resolution)
        elif in_dim != out_dim:
            raise ValueError(f"a stage without downsampling keeps its width ({in_dim} != {out_dim})")
        self.resolution = resolution
        self.blocks = nn.Sequential(*[
            LevitBlock(out_dim, key_dim, num_heads, attn_ratio, mlp_ratio, resolution, act_layer, attn_act_layer,
                       drop_path)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _per_stage(value: Any, stages: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * stages
    if len(values) != stages:
        raise ValueError(f"{name} needs one value per stage ({stages}), got {len(values)}")
    return values


class Levit(nn.Module):
    """LeViT; keyword names as ``timm.models.levit.Levit`` (linear mode; timm's ``use_conv``,
    ``stem_backbone`` and ``down_op`` variants are not offered). ``stem_type='s4'`` (two convolutions)
    is vitkit's, so that 28 px images keep a 7x7 token grid."""

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: Sequence[int] = (192,), key_dim: int = 64, depth: Sequence[int] = (12,),
                 num_heads: int | Sequence[int] = (3,), attn_ratio: float | Sequence[float] = 2.0,
                 mlp_ratio: float | Sequence[float] = 2.0, stem_type: Literal["s16", "s8", "s4"] = "s16",
                 act_layer: str = "hard_swish", attn_act_layer: str | None = None,
                 global_pool: Literal["avg"] = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 weight_init: str = ""):
        super().__init__()
        if weight_init not in ("", "skip"):  # every layer initialises itself as timm's does
            raise ValueError(f"weight_init {weight_init!r}: LeViT starts from timm's init ('') or none ('skip')")
        _check_pool(global_pool)
        if stem_type not in STEM_DEPTHS:
            raise ValueError(f"stem_type must be one of {', '.join(STEM_DEPTHS)}, got {stem_type!r}")
        act, attn_act = _activation(act_layer), _activation(attn_act_layer or act_layer)
        stages = len(embed_dim)
        depth = _per_stage(depth, stages, "depth")
        num_heads = _per_stage(num_heads, stages, "num_heads")
        attn_ratio = _per_stage(attn_ratio, stages, "attn_ratio")
        mlp_ratio = _per_stage(mlp_ratio, stages, "mlp_ratio")
        self.num_classes, self.global_pool, self.drop_rate = num_classes, global_pool, drop_rate
        self.num_features = embed_dim[-1]
        self.embed_dim = tuple(embed_dim)
        self.in_chans, self.img_size = in_chans, img_size  # the input geometry vitkit's trainers read
        self.stem = Stem(in_chans, embed_dim[0], act, STEM_DEPTHS[stem_type])
        resolution = tuple(i // self.stem.stride for i in to_2tuple(img_size))
        if min(resolution) < 1:
            raise ValueError(f"image size {img_size} is smaller than the stem's stride {self.stem.stride}")
        self.stages = nn.Sequential()
        in_dim = embed_dim[0]
        for i in range(stages):
            stage = LevitStage(in_dim, embed_dim[i], key_dim, depth[i], num_heads[i], attn_ratio[i], mlp_ratio[i],
                               act, attn_act, resolution, downsample=i > 0, drop_path=drop_path_rate)
            self.stages.append(stage)
            resolution, in_dim = stage.resolution, embed_dim[i]
        self.head = self.new_head()

    def new_head(self, zero_init: bool = False) -> nn.Module:
        if self.num_classes <= 0:
            return nn.Identity()
        return NormLinear(self.num_features, self.num_classes, self.drop_rate, zero_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def reset_classifier(self, num_classes: int, global_pool: Literal["avg"] | None = None,
                         zero_init: bool = False) -> None:
        """A fresh head for ``num_classes`` outputs (``zero_init``: a zero linear layer)."""
        if global_pool is not None:
            _check_pool(global_pool)
        self.num_classes = num_classes
        self.head = self.new_head(zero_init).train(self.training)  # its BatchNorm in the model's mode
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> the last stage's tokens [B, N, C]."""
        return self.stages(self.stem(x).flatten(2).transpose(1, 2))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: Literal["NCHW"] = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each chosen stage's output as a [B, C, H, W] map (timm's contract; LeViT has no final norm, so
        ``norm`` changes nothing). Unless ``intermediates_only``, the final tokens come first."""
        if output_fmt != "NCHW":
            raise ValueError(f"LeViT's intermediates are feature maps: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x = self.stem(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        intermediates = []
        for i, stage in enumerate(self.stages):
            if intermediates_only and i > last:
                break
            x = stage(x)
            if i > 0:
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            if i in take:
                intermediates.append(x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LevitDistilled(Levit):
    """LeViT with a second, distillation head (``head_dist``) on the same pooled features, as DeiT's.

    ``forward`` averages the two heads' logits, except in training after
    ``set_distilled_training(True)``, when it returns ``(cls_logits, dist_logits)``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.distilled_training = False
        self.head_dist = self.new_dist_head()

    def new_dist_head(self, zero_init: bool = False) -> nn.Module:
        if self.num_classes <= 0:
            return nn.Identity()
        return NormLinear(self.num_features, self.num_classes, zero_init=zero_init)  # timm: no dropout here

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: Literal["avg"] | None = None,
                         zero_init: bool = False) -> None:
        super().reset_classifier(num_classes, global_pool, zero_init)
        self.head_dist = self.new_dist_head(zero_init).train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = x.mean(dim=1)
        if pre_logits:
            return x
        cls, dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2


def levit(distilled: bool = True, **kwargs: Any) -> Levit:
    """timm's ``create_levit``: :class:`LevitDistilled` by default, the plain :class:`Levit` with ``distilled=False``."""
    return (LevitDistilled if distilled else Levit)(**kwargs)


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"act_layer must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _check_pool(global_pool: str) -> None:
    if global_pool != "avg":
        raise ValueError(f"LeViT pools by averaging its tokens: global_pool must be 'avg', got {global_pool!r}")


# --- registry: timm's LeViTs (distilled, as their weights), and one for 28x28 grayscale ------------
LEVIT_CONFIGS = {
    "levit_128s": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 6, 8), depth=(2, 3, 4)),
    "levit_128": dict(embed_dim=(128, 256, 384), key_dim=16, num_heads=(4, 8, 12), depth=(4, 4, 4)),
    "levit_192": dict(embed_dim=(192, 288, 384), key_dim=32, num_heads=(3, 5, 6), depth=(4, 4, 4)),
    "levit_256": dict(embed_dim=(256, 384, 512), key_dim=32, num_heads=(4, 6, 8), depth=(4, 4, 4)),
}
for _name, _cfg in LEVIT_CONFIGS.items():
    register_model(_name, levit, f"LeViT-{_name[6:].upper()}: stride-16 conv stem, stages of width "
                   f"{'/'.join(map(str, _cfg['embed_dim']))}, distillation head", **_cfg)
register_model("levit_mini_28", levit,
               "LeViT for 28x28 grayscale: stride-4 conv stem (7x7 tokens), stages 7/4/2 px of width 64/128/192",
               img_size=28, in_chans=1, num_classes=10, embed_dim=(64, 128, 192), key_dim=16, num_heads=(2, 4, 6),
               depth=(2, 2, 2), stem_type="s4", distilled=False)
