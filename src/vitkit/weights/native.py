"""vitkit's own checkpoint folder: ``model.safetensors`` (timm names) + ``config.json``.

The config names the registry entry and the full keyword arguments, so loading needs no
inference at all, and carries what inference needs beside the weights (class names,
normalisation mean/std). ``"model"`` and ``"model_kwargs"`` are the model's build spec; ``"model": null``
marks a ViT built by calling its class, described by what its tensors do not show.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitkitError
from ..fileio import write_json
from ..models.spec import with_tuples
from .checkpoint import Checkpoint
from .files import read_json, read_tensors
from .timm import save_timm

FORMAT = "vitkit"


def is_native(config: dict[str, Any]) -> bool:
    return config.get("format") == FORMAT


def read_folder(folder: Path) -> Checkpoint:
    config = read_json(folder / "config.json")
    meta = {k: v for k, v in config.items() if k not in ("format", "model", "model_kwargs")}
    kwargs = with_tuples(dict(config.get("model_kwargs") or {}))
    return Checkpoint(read_tensors(folder / "model.safetensors"), str(folder), FORMAT, kwargs,
                      config.get("model"), meta, spec_complete=config.get("model") is not None)


def save_vitkit(model: nn.Module, folder: str | Path, **meta: Any) -> Path:
    """Write a checkpoint folder; ``meta`` (e.g. ``classes``, ``mean``, ``std``) goes into config.json."""
    folder = Path(folder)
    spec = getattr(model, "build_spec", None)
    arch = spec.to_json() if spec is not None else {"model": None, "model_kwargs": _unstated_kwargs(model)}
    save_timm(model, folder / "model.safetensors", meta)  # the file alone then runs as the folder does
    config = {"format": FORMAT, **arch, **meta}
    write_json(folder / "config.json", config)
    return folder


def _unstated_kwargs(model: nn.Module) -> dict[str, Any]:
    """For a ViT built by hand: what its tensors alone would not tell a reader."""
    if not hasattr(model, "blocks"):
        raise VitkitError(f"cannot describe a {type(model).__name__} built by hand in a checkpoint: build it with "
                          "vitkit.create_model(name, ...) so that the checkpoint can name it")
    block = model.blocks[0]
    return {"num_heads": block.attn.num_heads, "norm_eps": block.norm1.eps}
