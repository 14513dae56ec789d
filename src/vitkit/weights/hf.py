"""Hugging Face ViT and DeiT folders, both ways.

HF keeps query/key/value as three Linear layers and its LayerNorm eps is 1e-12 (timm:
1e-6), so the eps travels in ``norm_eps``. ``ViTModel``'s pooler (Linear + tanh on the
[class] token) is exactly timm's pre-logits layer. ``ViTForImageClassification`` never
uses a pooler, so one stored beside a classifier is dropped, as HF itself does.

DeiT is the same encoder with a distillation token (``dist_token``).
``DeiTForImageClassificationWithTeacher``'s two classifiers are ``head`` and
``head_dist``; ``DeiTForImageClassification`` has only ``classifier`` on the [class]
token (a ``DistilledVisionTransformer`` with ``dist_head=False``). DeiT has no
pre-logits layer, so the untrained pooler HF adds to ``DeiTModel`` is dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitkitError
from ..fileio import atomic_write, write_json
from .checkpoint import Checkpoint, distinct_names
from .files import StateDict, read_json, read_tensors
from .keymap import Table, fuse_qkv, rename, split_qkv

_LAYER = "encoder.layer.{i}."
TABLE: Table = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.distillation_token", "dist_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
    (_LAYER + "layernorm_before", "blocks.{i}.norm1"),
    (_LAYER + "attention.attention.query", "blocks.{i}.attn.q"),
    (_LAYER + "attention.attention.key", "blocks.{i}.attn.k"),
    (_LAYER + "attention.attention.value", "blocks.{i}.attn.v"),
    (_LAYER + "attention.output.dense", "blocks.{i}.attn.proj"),
    (_LAYER + "layernorm_after", "blocks.{i}.norm2"),
    (_LAYER + "intermediate.dense", "blocks.{i}.mlp.fc1"),
    (_LAYER + "output.dense", "blocks.{i}.mlp.fc2"),
    ("layernorm", "norm"),
    ("pooler.dense", "pre_logits.fc"),
    # transformers >= 5 names in memory (files still use the names above); read only
    ("layers.{i}.layernorm_before", "blocks.{i}.norm1"),
    ("layers.{i}.attention.q_proj", "blocks.{i}.attn.q"),
    ("layers.{i}.attention.k_proj", "blocks.{i}.attn.k"),
    ("layers.{i}.attention.v_proj", "blocks.{i}.attn.v"),
    ("layers.{i}.attention.o_proj", "blocks.{i}.attn.proj"),
    ("layers.{i}.layernorm_after", "blocks.{i}.norm2"),
    ("layers.{i}.mlp.fc1", "blocks.{i}.mlp.fc1"),
    ("layers.{i}.mlp.fc2", "blocks.{i}.mlp.fc2"),
]
HEAD: Table = [("classifier", "head")]
DEIT_HEADS: Table = [("cls_classifier", "head"), ("distillation_classifier", "head_dist")]
VIT_CLASSIFIER = [("vit." + a, b) for a, b in TABLE] + HEAD
DEIT_CLASSIFIER = [("deit." + a, b) for a, b in TABLE] + HEAD  # DeiTForImageClassification
DEIT_WITH_TEACHER = [("deit." + a, b) for a, b in TABLE] + DEIT_HEADS
_DROPPED = ("embeddings.mask_token", "vit.embeddings.mask_token", "deit.embeddings.mask_token")  # masked pretraining


def is_hf(sd: StateDict) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd)


def read_folder(folder: Path) -> Checkpoint:
    """A ``save_pretrained`` folder: config.json plus model.safetensors or pytorch_model.bin (sharded or not)."""
    config = read_json(folder / "config.json")
    check_config(config, str(folder))  # before reading weights that could not be used
    return from_state_dict(read_weights(folder), str(folder), config,
                           _preprocessing(folder, config.get("num_channels", 3)))


WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""What ``save_pretrained`` writes, whole or sharded, in the order transformers reads them."""


def read_weights(folder: Path) -> StateDict:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensors(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            return {k: v for shard in shards for k, v in read_tensors(folder / shard).items()}
    raise VitkitError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")


def _preprocessing(folder: Path, channels: int) -> dict[str, Any]:
    """mean/std as one value per channel (HF's processors also take a single number for all of them),
    and the resize and crop, in timm's terms (see :class:`vitkit.data.transforms.EvalResize`)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = read_json(path)
    stats = {k: cfg[f"image_{k}"] for k in ("mean", "std") if f"image_{k}" in cfg}
    stats = {k: [float(v)] * channels if isinstance(v, (int, float)) else v for k, v in stats.items()}
    return {**stats, **_resize(cfg)}


_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's numbers
_SHORTEST_EDGE_BY_DEFAULT = ("ConvNext",)  # processors that read a plain "size": N as the shortest edge (CvT's)


def _resize(cfg: dict[str, Any]) -> dict[str, Any]:
    """ViT's processor squashes the image to ``size`` (crop_pct 1); DeiT's squashes it to 256 and crops
    224 (crop_pct 224/256); ConvNext's (CvT's) resizes the shortest edge to size / crop_pct and crops
    ``size``; others resize the shortest edge to ``size`` and crop ``crop_size``."""
    if not cfg.get("do_resize", True):
        return {}
    out: dict[str, Any] = {"interpolation": _RESAMPLE[cfg["resample"]]} if cfg.get("resample") in _RESAMPLE else {}
    size, crop = cfg.get("size"), cfg.get("crop_size") if cfg.get("do_center_crop") else None
    kind = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or ""
    if isinstance(size, int):
        size = {"shortest_edge": size} if kind.startswith(_SHORTEST_EDGE_BY_DEFAULT) else {"height": size, "width": size}
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if not isinstance(size, dict):
        return out
    if "shortest_edge" in size:
        if "crop_pct" in cfg:  # ConvNext's: the crop is `size`, taken from size / crop_pct (squashed from 384 up)
            big = size["shortest_edge"] >= 384
            return {**out, "crop_mode": "squash" if big else "center", "crop_pct": 1.0 if big else float(cfg["crop_pct"])}
        return {**out, "crop_mode": "center", "crop_pct": crop / size["shortest_edge"] if crop else 1.0}
    if "height" in size:
        return {**out, "crop_mode": "squash", "crop_pct": crop / size["height"] if crop else 1.0}
    return out


def from_state_dict(sd: StateDict, source: str, config: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Checkpoint:
    config = config or {}
    check_config(config, source)
    has_head = "classifier.weight" in sd or "cls_classifier.weight" in sd
    deit = any(k.endswith("embeddings.distillation_token") for k in sd)
    sd = {k: v for k, v in sd.items() if not (k.startswith(_DROPPED) or (has_head or deit) and "pooler." in k)}
    renamed, unknown = rename(sd, _read_table(sd))
    if unknown:
        raise VitkitError(f"{source}: tensor {unknown[0]} is not part of a ViT or DeiT (unsupported HF variant?)")
    labels = config.get("id2label") or {}
    meta = dict(meta or {})
    if has_head and labels:
        meta["classes"] = distinct_names([labels[k] for k in sorted(labels, key=int)])
    return Checkpoint(fuse_qkv(renamed), source, "hf", config_kwargs(config), meta=meta)


def _read_table(sd: StateDict) -> Table:
    """The base model's names alone (``ViTModel``, ``DeiTModel``), or under a classifier's prefix."""
    if any(k.startswith("vit.") for k in sd):
        return VIT_CLASSIFIER
    if any(k.startswith("deit.") for k in sd):
        return DEIT_WITH_TEACHER + HEAD
    return TABLE


def check_config(config: dict[str, Any], source: str) -> None:
    if config.get("model_type", "vit") not in ("vit", "deit"):
        raise VitkitError(f"{source}: model_type {config['model_type']!r} is not supported yet (only 'vit', 'deit')")
    for key, want in (("hidden_act", "gelu"), ("pooler_act", "tanh")):
        if config.get(key, want) != want:
            raise VitkitError(f"{source}: config {key}={config[key]!r} is not supported (only {want!r})")


def config_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    names = {"num_attention_heads": "num_heads", "layer_norm_eps": "norm_eps", "image_size": "img_size"}
    kwargs = {ours: config[theirs] for theirs, ours in names.items() if theirs in config}
    if isinstance(kwargs.get("img_size"), list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    return kwargs


def save_hf(model: nn.Module, folder: str | Path, classes: list[str] | None = None) -> Path:
    """Write a folder that ``transformers.ViTForImageClassification.from_pretrained`` loads
    (``ViTModel`` for a model without a head; for a distilled DeiT,
    ``DeiTForImageClassificationWithTeacher`` or ``DeiTModel``); class names default to the checkpoint's,
    and its normalisation goes to ``preprocessor_config.json`` (``AutoImageProcessor`` reads it)."""
    from safetensors.torch import save_file
    meta = getattr(model, "checkpoint_meta", {})
    classes = classes or meta.get("classes")
    if classes is not None and len(classes) != model.num_classes:
        raise VitkitError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    sd, config = to_hf(model, classes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    write_json(folder / "config.json", config)
    if meta.get("mean") is not None and meta.get("std") is not None:  # else HF's loaders assume 0.5, 0.5
        write_json(folder / "preprocessor_config.json", _preprocessor_config(model, meta["mean"], meta["std"]))
    return folder


def _preprocessor_config(model: nn.Module, mean: list[float], std: list[float]) -> dict[str, Any]:
    """``ViTImageProcessor``'s settings: resize to the model's input, scale to [0, 1], normalise."""
    h, w = model.patch_embed.img_size
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
            "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(mean), "image_std": list(std)}


def to_hf(model: nn.Module, classes: list[str] | None = None) -> tuple[StateDict, dict[str, Any]]:
    """The model's tensors with HF names, and the matching config.json content."""
    _check_exportable(model)
    sd = split_qkv({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    architecture, table = _hf_class(model)
    sd, _ = rename(sd, table, reverse=True)
    return sd, _config(model, architecture, classes if model.num_classes > 0 else None)


def _hf_class(model: nn.Module) -> tuple[str, Table]:
    """The transformers class that computes what ``model`` does, and its tensor names."""
    deit, with_head = hasattr(model, "dist_token"), model.num_classes > 0
    if not with_head:
        return ("DeiTModel" if deit else "ViTModel"), TABLE
    if not deit:
        return "ViTForImageClassification", VIT_CLASSIFIER
    if model.dist_head:
        return "DeiTForImageClassificationWithTeacher", DEIT_WITH_TEACHER
    return "DeiTForImageClassification", DEIT_CLASSIFIER


def _check_exportable(model: nn.Module) -> None:
    if not hasattr(model, "blocks"):
        raise VitkitError(f"cannot export a {type(model).__name__} to Hugging Face ViT: it is not a ViT")
    reasons = {
        "it is a hybrid (its CNN backbone has no HF ViT equivalent)": hasattr(model.patch_embed, "backbone"),
        "it is an SL-ViT (shifted patch tokens have no HF ViT equivalent)":
            not isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d),
        "it pools by averaging or attention (HF ViT uses the [class] token)":
            getattr(model, "global_pool", "") != "token",
        "it has LayerScale (ls1/ls2)": not isinstance(model.blocks[0].ls1, nn.Identity),
        "it norms the pooled token (fc_norm) instead of all tokens": not isinstance(model.fc_norm, nn.Identity),
        "it has a pre-logits layer and a head (HF's ViTForImageClassification has no pooler)":
            model.num_classes > 0 and not isinstance(model.pre_logits, nn.Identity),
    }
    for reason, bad in reasons.items():
        if bad:
            raise VitkitError(f"cannot export to Hugging Face ViT: {reason}")


def _config(model: nn.Module, architecture: str, classes: list[str] | None) -> dict[str, Any]:
    config = {"architectures": [architecture], "model_type": "deit" if architecture.startswith("DeiT") else "vit",
              **encoder_config(model), "pooler_act": "tanh", "pooler_output_size": model.num_features}
    if model.num_classes > 0:
        names = classes or [f"LABEL_{i}" for i in range(model.num_classes)]
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    return config


def encoder_config(model: nn.Module) -> dict[str, Any]:
    """The ViT encoder's part of an HF config (ViT, DeiT and ViTMAE name it alike)."""
    block, embed = model.blocks[0], model.patch_embed
    return {"hidden_size": model.embed_dim, "num_hidden_layers": len(model.blocks),
            "num_attention_heads": block.attn.num_heads, "intermediate_size": block.mlp.fc1.out_features,
            "hidden_act": "gelu", "layer_norm_eps": block.norm1.eps, "qkv_bias": block.attn.qkv.bias is not None,
            "image_size": _square(embed.img_size), "patch_size": _square(embed.patch_size),
            "num_channels": embed.proj.in_channels, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _square(size: tuple[int, int]) -> int | list[int]:
    return size[0] if size[0] == size[1] else list(size)
