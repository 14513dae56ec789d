"""Swin Transformer (Liu et al., 2021), with timm's names (``SwinTransformer``, timm >= 0.9 layout).

What changes against ViT: attention runs inside non-overlapping M×M windows of patch tokens (cost
linear in the image area instead of quadratic), and every second block shifts the windows by M/2
(a cyclic roll plus a mask keeping rolled-in tokens apart) so information crosses window borders.
Positions enter as a learned bias per head and relative offset, added to the attention logits,
not as absolute embeddings. Between stages, patch merging concatenates each 2×2 neighbourhood and
projects 4C -> 2C: the token grid halves and the width doubles, a pyramid as in a CNN. There is no
[class] token; the classifier averages the last stage's map.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitkitError
from .layers import Attention, DropPath, Mlp, PatchEmbed, to_2tuple
from .registry import register_model
from .spec import record_change
from .stages import check_feature_format, drop_path_rates, feature_take_indices, new_classifier, nhwc_as

Size = tuple[int, int]


def window_partition(x: torch.Tensor, window: Size) -> torch.Tensor:
    """[B, H, W, C] -> [B·windows, Mh·Mw, C], windows row by row within each image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: Size, h: int, w: int) -> torch.Tensor:
    """[B·windows, Mh·Mw, C] -> [B, H, W, C], the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(win_h: int, win_w: int) -> torch.Tensor:
    """[N, N] row of the bias table for each (query, key) pair of a window: their offset (dy, dx),
    shifted to start at 0, flattened as dy·(2Mw − 1) + dx."""
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + win_h - 1) * (2 * win_w - 1) + rel[..., 1] + win_w - 1


def resample_relative_position_bias_table(table: torch.Tensor, new_window: Size,
                                          old_window: Size | None = None) -> torch.Tensor:
    """[(2Mh−1)(2Mw−1), heads] for another window size: the table read as a per-head 2-D map of
    offsets and resized bicubically (timm's ``resize_rel_pos_bias_table_simple``), which keeps the bias
    of each offset direction while spreading it over the new range. ``old_window`` defaults to square."""
    n, heads = table.shape
    if old_window is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"a relative position bias table of {n} rows is not square: pass old_window")
        old = (side, side)
    else:
        old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old == new:
        return table
    grid = table.float().T.reshape(1, heads, *old)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.contiguous().to(table.dtype)


def shifted_window_mask(resolution: Size, window: Size, shift: Size) -> torch.Tensor | None:
    """[windows, N, N] additive mask (0 or −100) for the shifted windows, or None without a shift.

    After the cyclic roll, the last row and column of windows hold tokens from opposite image
    borders; the mask labels the (up to 9) regions the roll created and lets a token attend only
    within its own region, as the paper's (and timm's) mask does."""
    if not any(shift):
        return None
    h = math.ceil(resolution[0] / window[0]) * window[0]
    w = math.ceil(resolution[1] / window[1]) * window[1]
    regions = torch.zeros(1, h, w, 1)
    label = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[:, hs[0]:hs[1], ws[0]:ws[1], :] = label
            label += 1
    labels = window_partition(regions, window).squeeze(-1)  # [windows, N]
    differ = labels.unsqueeze(1) - labels.unsqueeze(2)
    return torch.zeros_like(differ).masked_fill(differ != 0, -100.0)


def window_and_shift(resolution: Size, window: Size, shift: Size, always_partition: bool) -> tuple[Size, Size]:
    """A window no larger than the map (then one window covers it all, and nothing is shifted), as timm's."""
    if always_partition:
        return window, shift
    window = tuple(r if r <= w else w for r, w in zip(resolution, window))
    shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, window, shift))
    return window, shift  # type: ignore[return-value]


class WindowAttention(Attention):
    """Multi-head self-attention within windows, with a learned relative position bias per head.

    Takes [B·windows, N, C] and an optional [windows, N, N] shift mask. Like ``Attention`` it runs
    fused SDPA (bias and mask as ``attn_mask``) unless an ``attn_hook`` is set or gradients flow on a
    CPU; the hook gets the window attention [B·windows, heads, N, N].
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, window_size: int | Size = 7,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if head_dim is not None and head_dim != self.head_dim:  # timm's head_dim: heads wider or narrower than dim
            self.head_dim, self.scale = head_dim, head_dim ** -0.5
            self.qkv = nn.Linear(dim, 3 * head_dim * num_heads, bias=qkv_bias)
            self.proj = nn.Linear(head_dim * num_heads, dim)
        self.window_size = to_2tuple(window_size)
        win_h, win_w = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(win_h, win_w), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        """[heads, N, N]: the table's entry for every (query, key) offset in a window."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x)
        out_dtype = qkv.dtype
        if self.matmul_dtype is not None:
            qkv = qkv.to(self.matmul_dtype)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias().to(q.dtype)
        if mask is not None:  # windows of one image are consecutive: view the batch as [images, windows]
            windows = mask.shape[0]
            bias = bias + mask.to(q.dtype).unsqueeze(1)  # [windows, heads, N, N]
            q, k, v = (t.reshape(b // windows, windows, *t.shape[1:]) for t in (q, k, v))
        if self.attn_hook is None and self._use_fused(x):
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
            if self.attn_hook is not None:
                self.attn_hook(self, attn.reshape(b, self.num_heads, n, n))
            x = self.attn_drop(attn) @ v
        x = x.reshape(b, self.num_heads, n, self.head_dim).transpose(1, 2).reshape(b, n, -1).to(out_dtype)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """Pre-LN block on a [B, H, W, C] map: (shifted) window attention, then the MLP on every token."""

    def __init__(self, dim: int, input_resolution: Size, num_heads: int = 4, head_dim: int | None = None,
                 window_size: int | Size = 7, shift_size: int | Size = 0, always_partition: bool = False,
                 dynamic_mask: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.input_resolution = to_2tuple(input_resolution)
        self.window_size, self.shift_size = window_and_shift(self.input_resolution, to_2tuple(window_size),
                                                             to_2tuple(shift_size), always_partition)
        self.dynamic_mask = dynamic_mask
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, num_heads, head_dim, self.window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        mask = None if dynamic_mask else shifted_window_mask(self.input_resolution, self.window_size, self.shift_size)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        shifted = any(self.shift_size)
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        pad_h, pad_w = -h % self.window_size[0], -w % self.window_size[1]
        if pad_h or pad_w:  # whole windows
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1:3]
        mask = self.attn_mask
        if self.dynamic_mask and shifted:
            mask = shifted_window_mask((hp, wp), self.window_size, self.shift_size).to(x.device)
        x = self.attn(window_partition(x, self.window_size), mask)
        x = window_reverse(x, self.window_size, hp, wp)
        if pad_h or pad_w:
            x = x[:, :h, :w]
        return torch.roll(x, shifts=self.shift_size, dims=(1, 2)) if shifted else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, -1, c)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class PatchMerging(nn.Module):
    """Halve the grid, widen the tokens: each 2×2 neighbourhood's 4C channels, normalised, -> ``out_dim``."""

    def __init__(self, dim: int, out_dim: int | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.dim, self.out_dim = dim, out_dim or 2 * dim
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[1:3]
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    """Patch merging (all stages but the first), then blocks alternating plain and shifted windows."""

    def __init__(self, dim: int, out_dim: int, input_resolution: Size, depth: int, downsample: bool = True,
                 num_heads: int = 4, head_dim: int | None = None, window_size: int | Size = 7,
                 always_partition: bool = False, dynamic_mask: bool = False, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] | float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.input_resolution = to_2tuple(input_resolution)
        self.output_resolution = (tuple(r // 2 for r in self.input_resolution) if downsample
                                  else self.input_resolution)
        window = to_2tuple(window_size)
        shift = (window[0] // 2, window[1] // 2)
        if not downsample and dim != out_dim:
            raise ValueError(f"a stage without patch merging keeps its width: dim {dim} != out_dim {out_dim}")
        self.downsample = PatchMerging(dim, out_dim, norm_eps) if downsample else nn.Identity()
        rates = drop_path if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, self.output_resolution, num_heads, head_dim, window,
                                 0 if i % 2 == 0 else shift, always_partition, dynamic_mask, mlp_ratio, qkv_bias,
                                 proj_drop, attn_drop, rates[i], norm_eps)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """timm's ``ClassifierHead`` on a [B, H, W, C] map: average pool (``'avg'``) or none (``''``), dropout, ``fc``."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if pool_type not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {pool_type!r}")
        self.in_features, self.pool_type = in_features, pool_type
        self.drop = nn.Dropout(drop_rate)
        self.fc = new_classifier(in_features, num_classes)

    def reset(self, num_classes: int, pool_type: str | None = None, zero_init: bool = False) -> None:
        if pool_type is not None:
            if pool_type not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {pool_type!r}")
            self.pool_type = pool_type
        self.fc = new_classifier(self.in_features, num_classes, zero_init)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean(dim=(1, 2))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin. Keyword names match ``timm.models.swin_transformer.SwinTransformer`` (``norm_layer`` and
    ``embed_layer`` aside: LayerNorm throughout, eps ``norm_eps``).

    ``window_size`` is one size for every stage or one per stage (Swin-S3); a stage whose map is no
    larger than its window attends over the whole map, unshifted (``always_partition=True`` keeps the
    window). ``strict_img_size=False`` takes other input sizes (the windows then pad the map and the
    shift mask is built per call). ``forward_features`` returns the normalised last map [B, H, W, C].
    """

    def __init__(self, img_size: int | Size = 224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", embed_dim: int | Sequence[int] = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), head_dim: int | None = None,
                 window_size: int | Sequence[int] | Sequence[Size] = 7, always_partition: bool = False,
                 strict_img_size: bool = True, mlp_ratio: float | Sequence[float] = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_eps: float = 1e-5, weight_init: str = ""):
        super().__init__()
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init must be '' (timm's) or 'skip', got {weight_init!r}")
        stages = len(depths)
        dims = list(embed_dim) if isinstance(embed_dim, Sequence) else [int(embed_dim * 2 ** i) for i in range(stages)]
        windows = _per_stage_windows(window_size, stages)
        ratios = list(mlp_ratio) if isinstance(mlp_ratio, Sequence) else [mlp_ratio] * stages
        if not len(dims) == len(num_heads) == len(ratios) == stages:
            raise ValueError(f"depths, num_heads, embed_dim and mlp_ratio need one entry per stage ({stages})")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.embed_dim = dims[0]
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dims[0], strict_img_size=strict_img_size,
                                      output_fmt="NHWC", norm_layer=lambda d: nn.LayerNorm(d, eps=norm_eps))
        grid = self.patch_embed.grid_size
        rates = drop_path_rates(drop_path_rate, depths)
        layers, in_dim, scale = [], dims[0], 1
        for i in range(stages):
            layers.append(SwinTransformerStage(
                in_dim, dims[i], (grid[0] // scale, grid[1] // scale), depths[i], i > 0, num_heads[i], head_dim,
                windows[i], always_partition, not strict_img_size, ratios[i], qkv_bias, proj_drop_rate,
                attn_drop_rate, rates[i], norm_eps))
            in_dim = dims[i]
            scale *= 2 if i > 0 else 1
        self.layers = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head = ClassifierHead(self.num_features, num_classes, global_pool, drop_rate)
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) for every linear layer, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, zero_init: bool = False) -> None:
        """A new head for ``num_classes`` outputs (``zero_init``: the ViT paper's fine-tuning head)."""
        self.head.reset(num_classes, global_pool, zero_init)
        self.num_classes, self.global_pool = num_classes, self.head.pool_type
        record_change(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> the normalised last-stage map [B, H/32, W/32, D] (patch 4)."""
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The chosen stages' output maps (``norm``: the last one through the final norm), and unless
        ``intermediates_only`` the ``forward_features`` output too, as timm's."""
        check_feature_format(output_fmt)
        take, last = feature_take_indices(len(self.layers), indices)
        x = self.patch_embed(x)
        maps = []
        for i, stage in enumerate(self.layers[:last + 1] if stop_early else self.layers):
            x = stage(x)
            if i in take:
                maps.append(nhwc_as(self.norm(x) if norm and i == len(self.layers) - 1 else x, output_fmt))
        return maps if intermediates_only else (self.norm(x), maps)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm checkpoint made at another window size (or image size, where a stage's map is
        smaller than the window): each relative position bias table resampled to this model's
        windows (:func:`resample_relative_position_bias_table`). The buffers timm once saved
        (``relative_position_index``, ``attn_mask``) are rebuilt, not read."""
        out = {}
        for key, value in state_dict.items():
            if key.endswith(("relative_position_index", "attn_mask")):
                continue
            if key.endswith("relative_position_bias_table"):
                attn = self.get_submodule(key.rsplit(".", 1)[0])
                if not isinstance(attn, WindowAttention):
                    raise VitkitError(f"tensor {key} does not belong to a window attention layer")
                if value.shape != attn.relative_position_bias_table.shape:
                    value = resample_relative_position_bias_table(value, attn.window_size)
            out[key] = value
        return out


def _per_stage_windows(window_size: Any, stages: int) -> list[Size]:
    """timm's reading: one int, an (h, w) pair for all stages, or one entry per stage."""
    if not isinstance(window_size, Sequence):
        return [to_2tuple(window_size)] * stages
    if len(window_size) == 2 and all(isinstance(w, int) for w in window_size):  # timm: a pair is (h, w)
        return [to_2tuple(tuple(window_size))] * stages
    if len(window_size) != stages:
        raise ValueError(f"window_size needs one entry per stage ({stages}), got {window_size}")
    return [to_2tuple(w) for w in window_size]


# --- registry: timm's Swins, and a small one for 28x28 grayscale --------------------------------------
_SIZES = {  # embed_dim, depths, num_heads
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
for _size, (_dim, _depths, _heads) in _SIZES.items():
    for _window, _res in ((7, 224), (12, 384)):
        if _res == 384 and _size in ("tiny", "small"):
            continue  # timm has no 384 px Swin-T/S
        register_model(f"swin_{_size}_patch4_window{_window}_{_res}", SwinTransformer,
                       f"Swin-{_size[0].upper()} at {_res}px, window {_window}", img_size=_res, patch_size=4,
                       window_size=_window, embed_dim=_dim, depths=_depths, num_heads=_heads)
for _size, _windows, _depths in (("tiny", (7, 7, 14, 7), (2, 2, 6, 2)), ("small", (14, 14, 14, 7), (2, 2, 18, 2)),
                                 ("base", (7, 7, 14, 7), (2, 2, 30, 2))):
    register_model(f"swin_s3_{_size}_224", SwinTransformer,
                   f"Swin-S3-{_size[0].upper()} (AutoFormerV2's searched windows) at 224px", img_size=224,
                   patch_size=4, window_size=_windows, embed_dim=96, depths=_depths, num_heads=(3, 6, 12, 24))
register_model("swin_mini_patch2_window7_28", SwinTransformer,
               "Swin for 28x28 grayscale: patch 2 (14x14 tokens, 4 shifted 7x7 windows), merged to 7x7; D64/128",
               img_size=28, patch_size=2, in_chans=1, num_classes=10, window_size=7, embed_dim=64, depths=(2, 4),
               num_heads=(2, 4), mlp_ratio=2.0)
