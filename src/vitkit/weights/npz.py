"""Google's Flax ``.npz`` checkpoints (google-research/vision_transformer and big_vision).

Flax stores a Dense kernel as (in, out), a conv kernel as HWIO and the attention
projections per head: query/key/value kernels (D, heads, head_dim), the output kernel
(heads, head_dim, D). That per-head shape is why an .npz, unlike a timm file, tells the
head count. Both repositories' sub-layer names are read (vision_transformer:
``LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3``; big_vision:
``LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0``), as are
scanned encoders (one ``encoderblock`` with a leading depth axis) and wrapper prefixes
such as ``opt/target/`` or ``params/``.
"""
from __future__ import annotations

import math
import re

import torch

from ..errors import VitkitError
from .checkpoint import Checkpoint
from .files import StateDict
from .keymap import Table, fuse_qkv, rename

_BLOCK = "Transformer.encoderblock_{i}."
_SCHEMES = [("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),  # vision_transformer
            ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")]  # big_vision
TABLE: Table = [
    ("embedding", "patch_embed.proj"),
    ("cls", "cls_token"),
    ("Transformer.posembed_input.pos_embedding", "pos_embed"),
    ("Transformer.pos_embedding", "pos_embed"),
    ("pos_embedding", "pos_embed"),
    (_BLOCK + "LayerNorm_0", "blocks.{i}.norm1"),
    ("Transformer.encoder_norm", "norm"),
    ("pre_logits", "pre_logits.fc"),
    ("head", "head"),
] + [row for attn, norm2, mlp in _SCHEMES for row in [
    (_BLOCK + f"{attn}.query", "blocks.{i}.attn.q"),
    (_BLOCK + f"{attn}.key", "blocks.{i}.attn.k"),
    (_BLOCK + f"{attn}.value", "blocks.{i}.attn.v"),
    (_BLOCK + f"{attn}.out", "blocks.{i}.attn.proj"),
    (_BLOCK + norm2, "blocks.{i}.norm2"),
    (_BLOCK + f"{mlp}.Dense_0", "blocks.{i}.mlp.fc1"),
    (_BLOCK + f"{mlp}.Dense_1", "blocks.{i}.mlp.fc2"),
]]


def is_npz(sd: StateDict) -> bool:
    return any(k.endswith("embedding/kernel") for k in sd)


def from_npz(arrays: StateDict, source: str) -> Checkpoint:
    arrays = _unstack(_strip_prefix(arrays))
    if any("MAPHead" in k for k in arrays):
        raise VitkitError(f"{source}: attention-pool (MAP) heads are not supported yet")
    dotted = {re.sub(r"\.(kernel|scale)$", ".weight", k.replace("/", ".")): v for k, v in arrays.items()}
    renamed, unknown = rename(dotted, TABLE)
    if unknown:
        raise VitkitError(f"{source}: array {unknown[0]} is not part of a plain ViT")
    num_heads = renamed["blocks.0.attn.q.weight"].shape[1] if renamed["blocks.0.attn.q.weight"].ndim == 3 else None
    sd = fuse_qkv({k: _to_torch_layout(k, v) for k, v in renamed.items()})
    _add_cls_position(sd)
    channels = sd["patch_embed.proj.weight"].shape[1]
    pixels = {"mean": [0.5] * channels, "std": [0.5] * channels}  # both repositories feed pixels in [-1, 1]
    return Checkpoint(sd, source, "npz", {"num_heads": num_heads} if num_heads else {}, meta=pixels)


def _strip_prefix(arrays: StateDict) -> StateDict:
    """Keep the model under its wrapper (``opt/target/``, ``params/``), dropping optimiser state beside it."""
    prefix = min((k[:-len("embedding/kernel")] for k in arrays if k.endswith("embedding/kernel")), key=len)
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _unstack(arrays: StateDict) -> StateDict:
    """``Transformer/encoderblock/x`` [depth, ...] (nn.scan) -> ``Transformer/encoderblock_{i}/x``."""
    out = {}
    for key, value in arrays.items():
        if key.startswith("Transformer/encoderblock/"):
            for i, layer in enumerate(value.unbind(0)):
                out[key.replace("encoderblock/", f"encoderblock_{i}/", 1)] = layer
        else:
            out[key] = value
    return out


def _to_torch_layout(key: str, w: torch.Tensor) -> torch.Tensor:
    if w.ndim == 4:  # conv HWIO -> OIHW
        return w.permute(3, 2, 0, 1).contiguous()
    if key.endswith("bias"):
        return w.reshape(-1)  # per-head (heads, head_dim) biases flatten
    if key.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight")):
        return w.reshape(w.shape[0], -1).T.contiguous()
    if key.endswith("attn.proj.weight"):
        return w.reshape(-1, w.shape[-1]).T.contiguous()
    if key.endswith(".weight") and w.ndim == 2:
        return w.T.contiguous()
    return w


def _add_cls_position(sd: StateDict) -> None:
    """big_vision adds position embeddings before prepending [class]: give [class] a zero one.

    Its ``pos_embedding`` then holds exactly a square grid; the older layout (concatenate,
    then add) holds a square grid plus one.
    """
    n = sd["pos_embed"].shape[1]
    if "cls_token" in sd and math.isqrt(n) ** 2 == n:
        zero = sd["pos_embed"].new_zeros(1, 1, sd["pos_embed"].shape[2])
        sd["pos_embed"] = torch.cat([zero, sd["pos_embed"]], dim=1)
