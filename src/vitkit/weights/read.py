"""Any supported file or folder -> a :class:`Checkpoint` (timm-named tensors) -> a model.

Formats are told apart by content (magic bytes, tensor names, ``config.json``), never by
extension alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitkitError
from . import hf, hf_cvt, hub, mae, native, npz, timm
from .build import build_model
from .checkpoint import Checkpoint
from .files import read_json, read_tensors, safetensors_metadata


def read_checkpoint(path: str | Path, name: str | None = None) -> Checkpoint:
    """Read a file or folder in any supported layout into timm-named tensors (no model built).

    ``name`` (a registered model) vouches for a file whose tensors show no ViT: it is read as that
    model's state dict in timm's layout (TNT, LeViT). ``hf-hub:ORG/NAME[@REV]`` is a Hugging Face Hub
    repo's folder, fetched into the cache first."""
    if hub.is_hub_ref(path):
        return hub.read_checkpoint(hub.resolve(path))
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    tensors = read_tensors(path)
    if npz.is_npz(tensors):
        return npz.from_npz(tensors, str(path))
    if mae.is_hf_mae(tensors):
        config = path.parent / "config.json"
        return mae.from_hf(tensors, str(path), read_json(config) if config.is_file() else {})
    if hf.is_hf(tensors):
        config = path.parent / "config.json"
        return hf.from_state_dict(tensors, str(path), read_json(config) if config.is_file() else {})
    if hf_cvt.is_hf_cvt(tensors):
        config = path.parent / "config.json"
        return hf_cvt.from_state_dict(tensors, str(path), read_json(config) if config.is_file() else {})
    metadata = safetensors_metadata(path)
    if not timm.names_its_model(metadata) and (mae.has_decoder(tensors) or mae.builds_mae(name)):
        return mae.from_state_dict(tensors, str(path), name)  # facebookresearch/mae's .pth (or timm's .mae)
    if timm.is_timm(tensors) or timm.names_its_model(metadata) or name:  # a CNN or hybrid file vitkit wrote names itself
        return timm.from_state_dict(tensors, str(path), metadata)
    raise VitkitError(f"{path}: no ViT weights recognised (first tensor: {next(iter(tensors))}); weights of "
                      "another registered model load with its name")


def _read_folder(folder: Path) -> Checkpoint:
    if not (folder / "config.json").is_file():
        raise VitkitError(f"{folder}: a checkpoint folder needs a config.json (vitkit or Hugging Face)")
    config = read_json(folder / "config.json")
    if native.is_native(config):
        return native.read_folder(folder)
    if config.get("model_type") == "vit_mae":
        return mae.read_hf_folder(folder)
    if config.get("model_type") == "cvt":
        return hf_cvt.read_folder(folder)
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
    ckpt = read_checkpoint(path, name)
    if mae.needs_decoder(ckpt, name):  # an encoder (timm's .mae, mae_pretrain_*.pth) asked for as an MAE
        ckpt = mae.with_fresh_decoder(ckpt, name, overrides)
    return build_model(ckpt, name, **overrides)
