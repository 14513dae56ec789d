"""Pretrained weights: read timm, Hugging Face, Google .npz and vitkit checkpoints; write them back.

Every reader turns its layout into timm-named tensors (a :class:`Checkpoint`), and one
builder infers the architecture from them, so a format is only a renaming table and a
few tensor reshapes. Formats are told apart by content (magic bytes, tensor names,
``config.json``), never by extension alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ..errors import VitkitError
from . import hf, hub, native, npz, timm
from .build import build_model
from .checkpoint import Checkpoint
from .files import read_json, read_tensors, safetensors_metadata
from .hf import save_hf, to_hf
from .native import save_vitkit
from .resample import resample_patch_embed
from .timm import save_timm

__all__ = ["Checkpoint", "convert", "load_model", "read_checkpoint", "resample_patch_embed", "save_hf",
           "save_timm", "save_vitkit", "to_hf"]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a file or folder in any supported layout into timm-named tensors (no model built);
    ``hf-hub:ORG/NAME[@REV]`` is a Hugging Face Hub repo's folder, fetched into the cache first."""
    if hub.is_hub_ref(path):
        return hub.read_checkpoint(hub.resolve(path))
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    tensors = read_tensors(path)
    if npz.is_npz(tensors):
        return npz.from_npz(tensors, str(path))
    if hf.is_hf(tensors):
        config = path.parent / "config.json"
        return hf.from_state_dict(tensors, str(path), read_json(config) if config.is_file() else {})
    metadata = safetensors_metadata(path)
    if timm.is_timm(tensors) or timm.names_its_model(metadata):  # a CNN or hybrid file vitkit wrote names itself
        return timm.from_state_dict(tensors, str(path), metadata)
    raise VitkitError(f"{path}: no ViT weights recognised (first tensor: {next(iter(tensors))})")


def _read_folder(folder: Path) -> Checkpoint:
    if not (folder / "config.json").is_file():
        raise VitkitError(f"{folder}: a checkpoint folder needs a config.json (vitkit or Hugging Face)")
    config = read_json(folder / "config.json")
    if native.is_native(config):
        return native.read_folder(folder)
    if "model_type" in config:
        return hf.read_folder(folder)
    if timm.is_timm_config(config):
        return timm.read_folder(folder)
    raise VitkitError(f"{folder}/config.json: neither a vitkit checkpoint (format: vitkit), a Hugging Face "
                      "config (model_type) nor a timm one (architecture)")


def load_model(path: str | Path, name: str | None = None, **overrides: Any) -> nn.Module:
    """Build a model from weights in any supported layout, inferring its architecture
    (``path`` may be a Hub repo, ``hf-hub:ORG/NAME[@REV]``; see :mod:`vitkit.weights.hub`).

    ``name`` (a registry name) and ``overrides`` (timm's keyword names: ``img_size``,
    ``num_heads``, ``num_classes``, ``global_pool``, ...) supply what the weights cannot
    tell. Without either, a timm file's head count is guessed as width / 64 (the head
    size of every ViT in the papers) and refused when the width is not a multiple of
    64. A different ``img_size`` or ``patch_size`` resamples the embeddings; a different
    ``num_classes`` gives a freshly initialised head. The checkpoint's class names and
    normalisation, when it has them, are in ``model.checkpoint_meta``. Weights with
    DeiT's distillation token build a ``DistilledVisionTransformer``; a vitkit
    checkpoint of a model that is not a ViT (a ResNet) is rebuilt from the name and
    keyword arguments it states.
    """
    return build_model(read_checkpoint(path), name, **overrides)


def convert(src: str | Path, dst: str | Path, to: Literal["vitkit", "timm", "hf"] = "vitkit",
            name: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            **overrides: Any) -> Path:
    """``vitkit convert``: load ``src`` in any layout and write ``dst`` as a vitkit folder,
    a timm state dict (a file; ``.pth`` gives a pickle, else safetensors) or an HF folder.
    ``mean``/``std`` record the input normalisation the weights were trained with (a timm file
    keeps none), so that predict, eval, serve and fine-tuning all feed them alike."""
    model = load_model(src, name, **overrides)
    meta = {k: v for k, v in model.checkpoint_meta.items() if k not in ("source", "format")}
    if (mean is None) != (std is None):
        raise VitkitError("give both mean and std, or neither")
    if mean is not None:
        chans = getattr(model, "patch_embed", model).in_chans  # a CNN has no patch embedding
        if len(mean) != chans or len(std) != chans or min(std) <= 0:
            raise VitkitError(f"mean and std need one value per input channel ({chans}), std > 0; "
                              f"got mean {list(mean)}, std {list(std)}")
        meta.update(mean=list(mean), std=list(std))
    if to == "vitkit":
        return save_vitkit(model, dst, **meta)
    if to == "timm":
        return save_timm(model, dst, meta)
    if to == "hf":
        return save_hf(model, dst, meta.get("classes"))
    raise VitkitError(f"unknown target format {to!r} (vitkit, timm or hf)")
