"""Read a ViT's architecture off its (timm-named) tensors.

Shapes fix the width, depth, patch size, grid, channels, MLP ratio, head and
pre-logits sizes; the presence of a tensor fixes the options (``cls_token``,
``fc_norm``, ``attn.qkv.bias``, ``ls1.gamma``, DeiT's ``dist_token`` and ``head_dist``), and
the length of ``pos_embed`` whether the prefix tokens have position embeddings (DeiT III's
``no_embed_class`` has none).
The head count leaves no trace in a fused ``qkv`` matrix, so it must come from
elsewhere (see :func:`default_num_heads`).
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import VitkitError
from ..models.registry import VIT_SIZES
from .files import StateDict

# Tensors of registered models whose architecture is not read off the tensors: they load under their name.
_NAMED_ONLY = {"blocks_token_only.0.gamma_1": "CaiT (cait_*)", "blocks.0.attn.gating_param": "ConViT (convit_*)",
               "pos_embed_0": "CrossViT (crossvit_*)"}
_REQUIRED = ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight")


def infer_kwargs(sd: StateDict, source: str, no_embed_class: bool | None = None) -> dict[str, Any]:
    """VisionTransformer keyword arguments that the tensors determine (not ``num_heads``); ``no_embed_class``
    as stated, or None to read it off ``pos_embed``'s length (see :func:`pos_embed_prefix`)."""
    family = next((f for key, f in _NAMED_ONLY.items() if key in sd), None)
    if family:
        raise VitkitError(f"{source}: these are a {family} model's weights, which vitkit loads under its "
                          "registered name: pass the model name (and any size the file's model differs in)")
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise VitkitError(f"{source}: not a Vision Transformer state dict (no {', '.join(missing)}); other "
                          "models load from a vitkit checkpoint folder, which names them")
    proj = sd["patch_embed.proj.weight"]
    dim, class_token = proj.shape[0], "cls_token" in sd
    kwargs: dict[str, Any] = dict(
        embed_dim=dim, depth=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd, class_token=class_token,
        no_embed_class=_no_embed_class(sd) if no_embed_class is None else no_embed_class,
        init_values=1e-5 if "blocks.0.ls1.gamma" in sd else None,  # any value: gamma is loaded over it
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        representation_size=sd["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in sd else None,
        **_pooling(sd, class_token))
    if "dist_token" in sd:  # DeiT; a classifier without head_dist is HF's DeiTForImageClassification
        kwargs["dist_head"] = "head_dist.weight" in sd or "head.weight" not in sd
    if proj.ndim == 4:  # SL-ViT's projection is linear over flattened shifted patches: its name says P and C
        kwargs.update(_patch_geometry(sd, proj.shape, kwargs["no_embed_class"]))
    if any(k.startswith("patch_embed.backbone.") for k in sd):
        # a hybrid's patches are cut from CNN features: the projection shows feature channels, not the
        # image's, and the CNN's stride hides the image size; the model name or the file must say them
        del kwargs["in_chans"]
        kwargs.pop("img_size", None)
    return kwargs


def _patch_geometry(sd: StateDict, proj_shape: tuple[int, ...], no_embed_class: bool) -> dict[str, Any]:
    """Channels and patch size from the patch-embedding conv; the image size from the position grid."""
    _, in_chans, ph, pw = proj_shape
    out: dict[str, Any] = dict(in_chans=in_chans, patch_size=ph if ph == pw else (ph, pw))
    grid = checkpoint_grid(sd, pos_embed_prefix(sd, no_embed_class))
    if grid is not None:
        out["img_size"] = grid[0] * ph if ph == pw else (grid[0] * ph, grid[1] * pw)
    return out


def _pooling(sd: StateDict, class_token: bool) -> dict[str, Any]:
    """``fc_norm`` means timm's avg pooling; no [class] token means the average of normed tokens (Google's 'gap');
    ``attn_pool`` is timm's attention pooling ('map', SigLIP's)."""
    if "attn_pool.latent" in sd:
        return dict(global_pool="map", fc_norm=False)
    if "fc_norm.weight" in sd:
        return dict(global_pool="avg", fc_norm=True)
    return dict(global_pool="token" if class_token else "avg", fc_norm=False)


def num_prefix_tokens(sd: StateDict) -> int:
    """Tokens before the patches: [class], and DeiT's distillation token."""
    return int("cls_token" in sd) + int("dist_token" in sd)


def _no_embed_class(sd: StateDict) -> bool:
    """Whether ``pos_embed`` leaves the prefix tokens out: its length is a square grid and, less the prefix,
    would not be. Square grids are never taken for anything else (no two squares above 1 differ by 1 or 2);
    a non-square grid whose length with the prefix is square (2x4 + 1 = 3x3) needs ``no_embed_class=False``
    passed, one without prefix entries ``no_embed_class=True``."""
    n, prefix = sd["pos_embed"].shape[1], num_prefix_tokens(sd)
    return prefix > 0 and math.isqrt(n) ** 2 == n and math.isqrt(n - prefix) ** 2 != n - prefix


def pos_embed_prefix(sd: StateDict, no_embed_class: bool | None = None) -> int:
    """Prefix tokens with an entry in ``pos_embed`` (kept apart when resampling the grid): all of them,
    or none in DeiT III's layout (``no_embed_class``; None: read it off the tensors)."""
    if no_embed_class is None:
        no_embed_class = _no_embed_class(sd)
    return 0 if no_embed_class else num_prefix_tokens(sd)


def checkpoint_grid(sd: StateDict, num_prefix_tokens: int) -> tuple[int, int] | None:
    """The patch grid the position embeddings were learned for, when square (else unknown)."""
    n = sd["pos_embed"].shape[1] - num_prefix_tokens
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def default_num_heads(embed_dim: int, source: str) -> tuple[int, str]:
    """The head count of the paper's size with this width (ViT-Ti/S/B/L/H); other widths get heads 64
    wide, as most ViTs' are. Returns the count and the reason, for the warning the caller gives.

    A wrong guess would load without complaint and give wrong logits, so widths not
    divisible by 64 are refused rather than guessed.
    """
    paper_heads = {size["embed_dim"]: size["num_heads"] for size in VIT_SIZES.values()}  # ViT-H's are 80 wide
    if embed_dim in paper_heads:
        return paper_heads[embed_dim], f"as the ViT/DeiT size of width {embed_dim}"
    if embed_dim % 64:
        raise VitkitError(f"{source}: the weights do not say how many attention heads the model has and width "
                          f"{embed_dim} is not a multiple of 64; pass num_heads=... or a model name")
    return embed_dim // 64, f"heads 64 wide, as most ViTs' are; width {embed_dim} is no ViT/DeiT size"
