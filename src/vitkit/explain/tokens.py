"""What the explain tools need to know about a model's token layout, checked once.

Every analysis here reads attention over the token sequence ``[prefix tokens, patch
tokens]``; these helpers find the attention layers, turn an input shape into its patch
grid, and decide which query row stands for "what the classifier looks at". Problems a
user can fix (an image the model cannot take, a layer or token that does not exist) are
raised as :class:`~vitkit.errors.VitkitError` before any work is done.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import VitkitError
from ..models.layers import AttentionPoolLatent


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's attention layers in forward order: every module that hands its probabilities to an
    ``attn_hook`` (vitkit's ``Attention``, CaiT's class attention, ConViT's gated attention), less an
    attention-pooling head, which rollout reads apart (see ``rollout_rows``)."""
    mods = [m for m in model.modules() if hasattr(m, "attn_hook") and not isinstance(m, AttentionPoolLatent)]
    if not mods:
        raise VitkitError(f"{type(model).__name__} has no vitkit Attention layers to explain")
    return mods


def check_vit(model: nn.Module) -> nn.Module:
    """``model``, if it is a Vision Transformer these tools can read (patches, blocks), else a clear error."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        hint = " (explain the model itself, not its prepare_for_inference copy)" if hasattr(model, "model") else ""
        raise VitkitError(f"explain reads a Vision Transformer's patches and attention; a {type(model).__name__} "
                          f"has none{hint}")
    if not hasattr(model.patch_embed, "patch_size"):
        raise VitkitError(f"explain reads one sequence of patch tokens; a {type(model).__name__} has one per "
                          "patch size (CrossViT's branches), which its maps cannot share")
    return model


def num_prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 0))


def patch_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.patch_size)  # type: ignore[return-value]


def input_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Check that the model can take ``x`` [B, C, H, W] and return its patch grid (H/P, W/P).

    The grid comes from the input, not the model's default, so ``dynamic_img_size``
    models can be explained at any size they accept.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise VitkitError(f"expected a batch of images [B, C, H, W], got {shape}")
    _, c, h, w = x.shape
    pe = check_vit(model).patch_embed
    if c != pe.in_chans:
        raise VitkitError(f"model expects {pe.in_chans}-channel images, got {c} channels")
    ph, pw = patch_size(model)
    if not getattr(model, "dynamic_img_size", False) and (h, w) != tuple(pe.img_size):
        raise VitkitError(f"model expects {pe.img_size[0]}x{pe.img_size[1]} images, got {h}x{w}")
    if h % ph or w % pw:
        raise VitkitError(f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}")
    return h // ph, w // pw


def resolve_layers(model: nn.Module, layers: int | Sequence[int] | None) -> list[int]:
    """Layer indices (negative ones count from the end) -> sorted, checked, non-negative."""
    depth = len(attention_modules(model))
    if layers is None:
        return list(range(depth))
    wanted = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for i in wanted:
        if not -depth <= int(i) < depth:
            raise VitkitError(f"layer {i} is out of range: the model has {depth} layers (0 to {depth - 1})")
        out.append(int(i) % depth)
    return sorted(set(out))


def resolve_token(model: nn.Module, token: int | None) -> int | None:
    """The query row that stands for the model's prediction; ``None`` means the mean of patch rows.

    ``None`` follows the head: the [class] token (row 0) for ``global_pool='token'``, the
    mean over patch queries for ``'avg'`` (the pooled feature is the mean of patch
    tokens) and for per-layer maps of ``'map'`` models (whose rollout reads the pool's own
    query instead, see :func:`~vitkit.explain.attention.attention_rollout`). An int picks a
    prefix token, e.g. 1 for a distilled DeiT's distillation token.
    """
    prefix = num_prefix_tokens(model)
    if token is None:
        return 0 if getattr(model, "global_pool", "token") == "token" and prefix else None
    if not 0 <= token < prefix:
        valid = f"0 to {prefix - 1}" if prefix else "none: it has no prefix tokens, leave the token out"
        raise VitkitError(f"token {token} is not a prefix token of this model (valid: {valid})")
    return token


def full_attention(attn: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """One layer's attention [B, heads, m, n] over the model's whole token sequence: [B, heads, N, N].

    Tokens a layer does not update keep themselves (identity rows): with m < n only the first m
    tokens attend (CaiT's class attention: [class] alone, over the fixed patches); with n < N the
    first N - n tokens have not joined the sequence yet (ConViT's [class] during its GPSA blocks).
    """
    b, h, m, n = attn.shape
    if m == n == num_tokens:
        return attn
    out = torch.eye(num_tokens, dtype=attn.dtype, device=attn.device).repeat(b, h, 1, 1)
    start = num_tokens - n
    out[:, :, start:start + m, start:] = attn
    return out


def query_row(mat: torch.Tensor, prefix: int, token: int | None) -> torch.Tensor:
    """[..., N, N] -> [..., patches]: one query's weights over the patch keys (prefix keys dropped)."""
    rows = mat[..., token, :] if token is not None else mat[..., prefix:, :].mean(dim=-2)
    return rows[..., prefix:]
