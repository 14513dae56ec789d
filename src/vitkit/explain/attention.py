"""Capture attention probabilities, and fold them into maps layer by layer.

``Attention`` runs fused SDPA, which never materialises softmax(QKᵀ/√d); setting its
``attn_hook`` switches it to the explicit path and hands each layer's probabilities to
the hook. :func:`record_attention` sets those hooks for the length of a ``with`` block
only, so inference stays fused everywhere else. Analyses consume each layer as it
arrives (rollout keeps one [B, N, N] product, class attention one row per layer), so
memory does not grow with depth; only :func:`attention_maps` keeps every layer, by
request.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn

from ..errors import VitkitError
from .tokens import (attention_modules, full_attention, input_grid, num_prefix_tokens, query_row, resolve_layers,
                     resolve_token)

# Called with (layer index, attention probabilities [B, heads, N, N]).
LayerCallback = Callable[[int, torch.Tensor], None]
HeadFusion = Literal["mean", "max", "min"]


@contextmanager
def record_attention(model: nn.Module, callback: LayerCallback, layers: int | Sequence[int] | None = None,
                     num_tokens: int | None = None) -> Iterator[None]:
    """Within the block, call ``callback(layer, attn)`` for each selected attention layer.

    With ``num_tokens`` (prefix + patches) every layer's attention comes as [B, heads, N, N] over
    that whole sequence (see :func:`~vitkit.explain.tokens.full_attention`); without, as the layer has it.
    Hooks are removed on exit, also when the block raises, so the model goes back to
    fused attention; a hook already set by someone else is restored rather than cleared.
    """
    mods = attention_modules(model)
    chosen = resolve_layers(model, layers)
    saved = [(mods[i], mods[i].attn_hook) for i in chosen]

    def make_hook(i: int):
        if num_tokens is None:
            return lambda _module, attn: callback(i, attn.detach())
        return lambda _module, attn: callback(i, full_attention(attn.detach(), num_tokens))

    try:
        for i in chosen:
            mods[i].attn_hook = make_hook(i)
        yield
    finally:
        for mod, previous in saved:
            mod.attn_hook = previous


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Explain the model as it predicts (dropout off, no autograd), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def forward_with_attention(model: nn.Module, x: torch.Tensor, callback: LayerCallback,
                           layers: int | Sequence[int] | None = None, full: bool = True) -> torch.Tensor:
    """One eval-mode, no-grad forward pass that feeds each layer's attention to ``callback``; returns logits.
    ``full``: each layer's attention over the model's whole token sequence, [B, heads, N, N].

    It runs every token through every layer (``forward_features``), where ``model(x)`` may skip the
    last layer's patch tokens, whose attention rows a map or a rollout needs."""
    num_tokens = None
    if full:
        gh, gw = input_grid(model, x)
        num_tokens = num_prefix_tokens(model) + gh * gw
    with eval_no_grad(model), record_attention(model, callback, layers, num_tokens):
        return model.forward_head(model.forward_features(x))


def attention_maps(model: nn.Module, x: torch.Tensor, layers: int | Sequence[int] | None = None) -> torch.Tensor:
    """Attention probabilities of the selected layers, stacked: [layers, B, heads, N, N].

    N counts prefix tokens first, then patches row by row. This keeps every selected
    layer in memory; prefer the folding functions below for whole deep models.
    """
    input_grid(model, x)
    maps: dict[int, torch.Tensor] = {}
    forward_with_attention(model, x, maps.__setitem__, layers)
    return torch.stack([maps[i] for i in sorted(maps)])


def fuse_heads(attn: torch.Tensor, head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """[B, heads, N, N] -> [B, N, N]."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise VitkitError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


class Rollout:
    """Attention rollout (Abnar & Zuidema, 2020), folded one layer at a time.

    Each layer's head-fused attention gets the residual connection as 0.5·A + 0.5·I,
    rows are renormalised to sum to 1, and the product R = Â_L ⋯ Â_1 says how much each
    output token draws from each input token across the whole depth.
    """

    def __init__(self, head_fusion: HeadFusion = "mean"):
        self.head_fusion = head_fusion
        self.result: torch.Tensor | None = None

    def update(self, attn: torch.Tensor) -> None:
        a = fuse_heads(attn.float(), self.head_fusion)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        self.result = a if self.result is None else a @ self.result


def rollout(attentions: Iterable[torch.Tensor], head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Rollout of per-layer attention [B, heads, N, N] (first layer first) -> [B, N, N]."""
    acc = Rollout(head_fusion)
    for attn in attentions:
        acc.update(attn)
    if acc.result is None:
        raise ValueError("rollout needs at least one attention layer")
    return acc.result


class ClassAttention:
    """Keeps, per layer, the chosen query's attention over patch keys: [layers, B, heads, patches]."""

    def __init__(self, prefix: int, token: int | None):
        self.prefix, self.token = prefix, token
        self.rows: list[torch.Tensor] = []

    def update(self, attn: torch.Tensor) -> None:
        self.rows.append(query_row(attn.float(), self.prefix, self.token))

    def stacked(self) -> torch.Tensor:
        return torch.stack(self.rows)


def attention_rollout(model: nn.Module, x: torch.Tensor, head_fusion: HeadFusion = "mean",
                      token: int | None = None) -> torch.Tensor:
    """What each patch contributes to the prediction, through all layers: [B, gh, gw].

    The map is the rollout row of ``token`` over patch tokens (see
    :func:`~vitkit.explain.tokens.resolve_token`: by default the [class] token, or the
    mean over patch rows for average-pooled models; ``token=1`` is a distilled DeiT's
    distillation token). An attention-pooled model (``global_pool='map'``) is read the
    way its head reads it: the pool's own weights over the last layer's tokens, rolled
    out through the layers (the pool has no residual path, so no identity is mixed in).
    Values are the raw rollout weights; the prefix tokens' share is left out, so a row
    sums to at most 1.
    """
    gh, gw = input_grid(model, x)
    return rollout_rows(model, x, head_fusion, token)[1].reshape(-1, gh, gw)


def rollout_rows(model: nn.Module, x: torch.Tensor, head_fusion: HeadFusion = "mean", token: int | None = None,
                 also: LayerCallback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and :func:`attention_rollout`'s rows, flat [B, patches], from one forward pass that also
    feeds each layer's attention to ``also`` (the report's per-layer maps come from the same pass)."""
    prefix = num_prefix_tokens(model)
    acc = Rollout(head_fusion)

    def fold(layer: int, attn: torch.Tensor) -> None:
        acc.update(attn)
        if also is not None:
            also(layer, attn)

    pool = getattr(model, "attn_pool", None)
    if pool is None or token is not None:
        logits = forward_with_attention(model, x, fold)
        return logits, query_row(acc.result, prefix, resolve_token(model, token))
    pooled: list[torch.Tensor] = []
    previous, pool.attn_hook = pool.attn_hook, lambda _m, w: pooled.append(w.detach().float())
    try:
        logits = forward_with_attention(model, x, fold)
    finally:
        pool.attn_hook = previous
    row = (fuse_heads(pooled[0], head_fusion) @ acc.result)[:, 0]  # [B, N] over the input tokens
    return logits, row[:, prefix:]


def class_attention(model: nn.Module, x: torch.Tensor, token: int | None = None,
                    layers: int | Sequence[int] | None = None) -> torch.Tensor:
    """Per layer and head, where the [class] token (or ``token``) looks: [layers, B, heads, gh, gw]."""
    gh, gw = input_grid(model, x)
    acc = ClassAttention(num_prefix_tokens(model), resolve_token(model, token))
    forward_with_attention(model, x, lambda _i, attn: acc.update(attn), layers)
    rows = acc.stacked()
    return rows.reshape(*rows.shape[:3], gh, gw)
