"""timm's own layout: vitkit's parameter names are timm's, so reading is validation and
writing is a plain state dict (safetensors, or a pickle for ``.pth``/``.pt``/``.bin``).

A folder timm's ``push_to_hub`` wrote (every ``timm/`` repo on the Hugging Face Hub) adds a
config.json: the ``architecture`` (a registry name), the ``model_args`` it was built with, the
class names (``label_names``) and, in ``pretrained_cfg``, how images were prepared for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagenet import IMAGENET_1K_CLASSES, imagenet_classes, imagenet_synsets
from ..errors import VitkitError
from ..fileio import atomic_write
from ..models import get_model_spec
from .checkpoint import (Checkpoint, architecture_from_metadata, architecture_metadata, distinct_names,
                         run_meta_from_metadata, run_metadata, with_tuples)
from .files import StateDict, read_json, read_tensors

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm pushes, in the order it reads them


def is_timm(sd: StateDict) -> bool:
    """timm names every ViT family's patch stem ``patch_embed.*`` (``proj``, PiT's ``conv``, CrossViT's
    ``patch_embed.0`` per branch)."""
    return any(k.startswith("patch_embed.") for k in sd)


def names_its_model(metadata: dict[str, str] | None) -> bool:
    """Whether a safetensors header (one vitkit wrote) names the registered model its tensors belong to."""
    return architecture_from_metadata(metadata or {})[0] is not None


def from_state_dict(sd: StateDict, source: str, metadata: dict[str, str] | None = None) -> Checkpoint:
    """Tensors vitkit lacks (register tokens, attention-pool heads) are left in, so loading names them.
    A file vitkit wrote names its model in ``metadata`` (the safetensors header)."""
    name, kwargs = architecture_from_metadata(metadata or {})
    return Checkpoint(dict(sd), source, "timm", kwargs, name, run_meta_from_metadata(metadata or {}),
                      spec_complete=name is not None)


def is_timm_config(config: dict[str, Any]) -> bool:
    return "architecture" in config


def read_folder(folder: Path) -> Checkpoint:
    config = read_json(folder / "config.json")
    name = config["architecture"]
    try:
        get_model_spec(name)
    except ValueError:
        raise VitkitError(f"{folder}: architecture {name!r} is not in vitkit (yet); `vitkit models` lists those "
                          "it has") from None
    weights = next((folder / f for f in WEIGHTS_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise VitkitError(f"{folder}: no {' or '.join(WEIGHTS_FILES)} next to config.json")
    sd = read_tensors(weights)
    pretrained_cfg = config.get("pretrained_cfg", config)  # old exports kept one flat dict
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    return Checkpoint(sd, str(folder), "timm", with_tuples(dict(config.get("model_args") or {})), name,
                      _run_meta(config, pretrained_cfg, num_classes))


def _run_meta(config: dict[str, Any], pretrained_cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Normalisation and eval crop from ``pretrained_cfg``; class names from ``label_names`` (their
    ``label_descriptions`` when given: ImageNet's labels are synsets), else ImageNet-1k's for a head of
    1000 outputs, as timm infers them."""
    meta = {k: pretrained_cfg[k] for k in ("crop_pct", "interpolation", "crop_mode") if pretrained_cfg.get(k)}
    meta.update({k: list(pretrained_cfg[k]) for k in ("mean", "std") if pretrained_cfg.get(k)})
    labels = config.get("label_names") or pretrained_cfg.get("label_names") or pretrained_cfg.get("labels")
    if isinstance(labels, dict):  # {index: name}, where indices have gaps
        labels = [labels.get(str(i), labels.get(i, str(i))) for i in range(num_classes)]
    described = config.get("label_descriptions") or pretrained_cfg.get("label_descriptions") or {}
    if labels == imagenet_synsets() and not described:
        labels = imagenet_classes()
    elif labels:
        labels = [described.get(label, label) for label in labels]
    elif num_classes == IMAGENET_1K_CLASSES:
        labels = imagenet_classes()
    if labels and len(labels) == num_classes:
        meta["classes"] = distinct_names([str(label) for label in labels])
    return meta


def save_timm(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the model's weights under timm's names, for ``timm`` or any tool that reads its state dicts;
    a safetensors file also names the vitkit model, and ``meta``'s classes, mean and std (default: those
    the model was loaded with), in its header, which timm ignores. A ``.pth`` keeps the tensors alone."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # from a GPU too
    if path.suffix in (".pth", ".pt", ".bin"):
        return atomic_write(path, lambda tmp: torch.save(sd, tmp))
    from safetensors.torch import save_file
    meta = getattr(model, "checkpoint_meta", {}) if meta is None else meta
    metadata = {"format": "pt", **architecture_metadata(model), **run_metadata(meta)}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=metadata))
