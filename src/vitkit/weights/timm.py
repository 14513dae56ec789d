"""timm's own layout: vitkit's parameter names are timm's, so reading is validation and
writing is a plain state dict (safetensors, or a pickle for ``.pth``/``.pt``/``.bin``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import atomic_write
from .checkpoint import (Checkpoint, architecture_from_metadata, architecture_metadata, run_meta_from_metadata,
                         run_metadata)
from .files import StateDict


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
    return Checkpoint(dict(sd), source, "timm", kwargs, name, run_meta_from_metadata(metadata or {}))


def save_timm(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the model's weights under timm's names, for ``timm`` or any tool that reads its state dicts;
    a safetensors file also names the vitkit model, and ``meta``'s classes, mean and std (default: those
    the model was loaded with), in its header, which timm ignores. A ``.pth`` keeps the tensors alone."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix in (".pth", ".pt", ".bin"):
        return atomic_write(path, lambda tmp: torch.save(sd, tmp))
    from safetensors.torch import save_file
    meta = getattr(model, "checkpoint_meta", {}) if meta is None else meta
    metadata = {"format": "pt", **architecture_metadata(model), **run_metadata(meta)}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=metadata))
