"""Checkpoint folders: ``model.safetensors`` (timm-named tensors) + ``config.json``.

The same folder feeds ``eval``, ``predict``, ``explain``, ``finetune`` and ``export``.
``train_state.pt`` beside them holds what only a resumed run needs (optimizer, epoch,
history); it carries its own copy of the weights so that resuming reads one file that
was written atomically, never a half-updated pair.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import VitkitError
from ..models import create_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
STATE_NAME = "train_state.pt"
FORMAT = "vitkit"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a killed job leaves
    either the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def model_config(model: nn.Module, **meta: Any) -> dict[str, Any]:
    model = unwrap(model)
    return {"format": FORMAT, "model": model.model_name, "model_kwargs": model.model_kwargs, **meta}


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights and config; ``meta`` holds classes, mean/std, recipe, metrics, ..."""
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(directory / CONFIG_NAME, model_config(model, **meta))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise VitkitError(f"{directory}: checkpoint folder not found")
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise VitkitError(f"{path}: missing (a vitkit checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME})") from None
    except json.JSONDecodeError as e:
        raise VitkitError(f"{path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT:
        raise VitkitError(f"{path}: not a vitkit checkpoint config (no \"format\": \"{FORMAT}\")")
    return cfg


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strict load whose error names the file, the tensor and both shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for key in expected.keys() & state.keys():
        if expected[key].shape != state[key].shape:
            raise VitkitError(f"{source}: tensor '{key}' has shape {list(state[key].shape)}, "
                              f"the model expects {list(expected[key].shape)}")
    if missing or unexpected:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        raise VitkitError(f"{source}: weights do not fit the model: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise VitkitError(f"{path}: weights file missing") from None
    except (SafetensorError, OSError) as e:
        raise VitkitError(f"{path}: not a readable safetensors file ({e})") from None


def load_checkpoint(directory: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load its weights; returns (model in eval mode, config)."""
    cfg = read_config(directory)
    model = create_model(cfg["model"], **{**cfg["model_kwargs"], **overrides})
    load_state_dict_checked(model, read_weights(Path(directory) / WEIGHTS_NAME), Path(directory) / WEIGHTS_NAME)
    return model.eval(), cfg


def save_train_state(directory: str | Path, state: dict[str, Any]) -> None:
    atomic_write(Path(directory) / STATE_NAME, lambda tmp: torch.save(state, tmp))


def load_train_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_NAME
    if not path.exists():
        raise VitkitError(f"{path}: no training state to resume from (was the run started with this --output?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise VitkitError(f"{path}: cannot read training state ({e.__class__.__name__}: {e})") from None
