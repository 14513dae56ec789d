"""Hugging Face CvT folders (``CvtForImageClassification.save_pretrained``), read into vitkit's CvT.

vitkit's :class:`~vitkit.models.cvt.CvT` keeps Microsoft's original parameter names, which
are shorter than HF's (``attention.attention.convolution_projection_query.
convolution_projection.convolution`` is ``attn.conv_proj_q.conv``); this table renames one
to the other. ``config.json`` says the rest: widths, depths, heads, kernels and strides
per stage, and whether the last stage has a [class] token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import VitkitError
from ..models import list_models
from ..models.registry import get_model_spec
from .checkpoint import Checkpoint
from .files import StateDict, read_json
from .hf import _preprocessing, read_weights
from .keymap import Table, rename

_STAGE, _LAYER = "encoder.stages.{i}.", "encoder.stages.{i}.layers.{j}."
_BLOCK = "stages.{i}.blocks.{j}."
_QKV = {"query": "q", "key": "k", "value": "v"}
TABLE: Table = [
    (_STAGE + "embedding.convolution_embeddings.projection", "stages.{i}.patch_embed.proj"),
    (_STAGE + "embedding.convolution_embeddings.normalization", "stages.{i}.patch_embed.norm"),
    (_STAGE + "cls_token", "stages.{i}.cls_token"),
    *[(_LAYER + f"attention.attention.convolution_projection_{hf}.convolution_projection.{part}",
       _BLOCK + f"attn.conv_proj_{ours}.{mine}")
      for hf, ours in _QKV.items() for part, mine in (("convolution", "conv"), ("normalization", "bn"))],
    *[(_LAYER + f"attention.attention.projection_{hf}", _BLOCK + f"attn.proj_{ours}") for hf, ours in _QKV.items()],
    (_LAYER + "attention.output.dense", _BLOCK + "attn.proj"),
    (_LAYER + "layernorm_before", _BLOCK + "norm1"),
    (_LAYER + "layernorm_after", _BLOCK + "norm2"),
    (_LAYER + "intermediate.dense", _BLOCK + "mlp.fc1"),
    (_LAYER + "output.dense", _BLOCK + "mlp.fc2"),
    ("layernorm", "norm"),
    ("classifier", "head"),
]

# CvtConfig's defaults (microsoft/cvt-13), for a config.json that leaves a field out; ours <- HF's field.
_DEFAULTS = dict(num_channels=3, patch_sizes=[7, 3, 3], patch_stride=[4, 2, 2], patch_padding=[2, 1, 1],
                 embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10], mlp_ratio=[4.0] * 3,
                 qkv_bias=[True] * 3, cls_token=[False, False, True], qkv_projection_method=["dw_bn"] * 3,
                 kernel_qkv=[3] * 3, padding_kv=[1] * 3, stride_kv=[2] * 3, padding_q=[1] * 3, stride_q=[1] * 3)
_FIELDS = {"in_chans": "num_channels", "patch_size": "patch_sizes", "patch_stride": "patch_stride",
           "patch_padding": "patch_padding", "embed_dim": "embed_dim", "num_heads": "num_heads", "depth": "depth",
           "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "kernel_qkv": "kernel_qkv", "padding_kv": "padding_kv",
           "stride_kv": "stride_kv", "padding_q": "padding_q", "stride_q": "stride_q"}


def is_hf_cvt(sd: StateDict) -> bool:
    return any(k.endswith("embedding.convolution_embeddings.projection.weight") for k in sd)


def read_folder(folder: Path) -> Checkpoint:
    """A ``save_pretrained`` folder: config.json plus model.safetensors or pytorch_model.bin."""
    config = read_json(folder / "config.json")
    kwargs = _kwargs(config, str(folder))  # before reading weights that could not be used
    return _checkpoint(read_weights(folder), str(folder), config, kwargs,
                       _preprocessing(folder, kwargs["in_chans"]))


def from_state_dict(sd: StateDict, source: str, config: dict[str, Any]) -> Checkpoint:
    """HF CvT tensors with the config.json beside them (HF's defaults where there is none)."""
    return _checkpoint(sd, source, config, _kwargs(config, source), {})


def _checkpoint(sd: StateDict, source: str, config: dict[str, Any], kwargs: dict[str, Any],
                meta: dict[str, Any]) -> Checkpoint:
    sd = {k.removeprefix("cvt."): v for k, v in sd.items()}
    renamed, unknown = rename(sd, TABLE)
    if unknown:
        raise VitkitError(f"{source}: tensor {unknown[0]} is not part of a CvtForImageClassification")
    if "norm.weight" not in renamed:
        raise VitkitError(f"{source}: no final layernorm: a CvtModel without its classifier wrapper cannot be "
                          "loaded; save CvtForImageClassification")
    kwargs["num_classes"] = renamed["head.weight"].shape[0] if "head.weight" in renamed else 0
    labels = config.get("id2label") or {}
    if kwargs["num_classes"] and len(labels) == kwargs["num_classes"]:
        meta = {**meta, "classes": [labels[k] for k in sorted(labels, key=int)]}
    return Checkpoint(renamed, source, "hf", kwargs, _registered_name(kwargs), meta)


def _kwargs(config: dict[str, Any], source: str) -> dict[str, Any]:
    """CvT keyword arguments from an HF CvtConfig's fields (per-stage lists become tuples)."""
    cfg = {**_DEFAULTS, **config}
    if any(method != "dw_bn" for method in cfg["qkv_projection_method"]):
        raise VitkitError(f"{source}: qkv_projection_method {cfg['qkv_projection_method']} is not supported "
                          "(only 'dw_bn', depthwise convolution + BatchNorm, which every released CvT uses)")
    if any(cfg["cls_token"][:-1]):
        raise VitkitError(f"{source}: cls_token {cfg['cls_token']}: only the last stage may have a [class] token")
    kwargs = {ours: tuple(cfg[hf]) if isinstance(cfg[hf], list) else cfg[hf] for ours, hf in _FIELDS.items()}
    kwargs["cls_token"] = bool(cfg["cls_token"][-1])
    return kwargs


def _registered_name(kwargs: dict[str, Any]) -> str:
    """The registered CvT of these widths and depths, else cvt_13 (the keyword arguments say the rest)."""
    for name in list_models("cvt_*"):
        spec = get_model_spec(name).kwargs
        if tuple(spec["embed_dim"]) == kwargs["embed_dim"] and tuple(spec["depth"]) == kwargs["depth"]:
            return name
    return "cvt_13"
