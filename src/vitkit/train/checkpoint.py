"""A run's checkpoints: the model folder users take elsewhere, and the state a resumed run needs.

The model folder (``model.safetensors`` with timm names + ``config.json``) is the format
``vitkit.weights`` reads and writes; the same folder feeds ``eval``, ``predict``,
``explain``, ``finetune`` and ``export``. ``train_state.pt`` beside it carries its own
copy of the weights with the optimizer, so a resume reads one file that was written
atomically, never a half-updated pair.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalResize
from ..errors import VitkitError
from ..fileio import atomic_write
from ..weights import load_model, save_vitkit
from .finetune import input_geometry

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is not guarded
    fcntl = None

STATE_NAME = "train_state.pt"
RUN_FILES = ("model.safetensors", "config.json", STATE_NAME, "eval.json", "metrics.jsonl", "curves.png",
             "confusion.png", "model.onnx", "model.torchscript.pt")
"""What a run (and ``vitkit eval`` / ``export`` on it) leaves in its folder."""
RUN_FOLDERS = {"best": ("model.safetensors", "config.json"), "eval": ("eval.json", "confusion.png"),
               "explain": ("report.html", "*.png", "attention_distance.json")}  # explain/: what `make demo` draws
"""Its sub-folders and the files vitkit writes in them (a user's own files there stay)."""
LOCK_NAME = ".vitkit-train.lock"


@contextlib.contextmanager
def training_lock(directory: str | Path) -> Iterator[None]:
    """Hold the run folder for this training process. A second run into it (the same command in
    another terminal, a ``--resume`` or ``--overwrite`` of a run still going) would interleave its
    epochs with this one's or delete them. The OS drops the lock when the process dies, so a killed
    run leaves nothing to clean up. Under torchrun rank 0 holds it for all ranks."""
    out = Path(directory)
    if fcntl is None or os.environ.get("RANK", "0") != "0" or (out.exists() and not out.is_dir()):
        yield  # (a file in the way is reported by claim_output)
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VitkitError(f"{out}: another process is training into this folder; let it finish (or stop "
                              f"it and `vitkit train --resume {out}`), or choose another --output") from None
        try:
            yield
        finally:
            if [p.name for p in out.iterdir()] == [LOCK_NAME]:  # a run that never started leaves nothing
                path.unlink()
                if created:
                    out.rmdir()


def claim_output(directory: str | Path, overwrite: bool = False, inputs: list[str | None] = (),
                 remove: bool = True) -> None:
    """Refuse to train into a folder that holds a run, unless asked to replace it.

    Training over a run would silently lose it, and leave files of the old model (an exported
    model.onnx, a best/ epoch) beside the new one's. With ``overwrite`` those files are removed;
    anything else the user keeps there stays. ``inputs`` (weights, teacher, backbone the run
    reads) may not lie in the folder: replacing it would delete them before they are read.
    ``remove=False`` only checks (the trainer checks first and deletes once the new run is built).
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise VitkitError(f"{out}: is a file, not a folder for the run")
    for source in filter(None, inputs):
        path = Path(source).resolve()
        if path == out.resolve() or out.resolve() in path.parents:
            raise VitkitError(f"{out}: is also where this run reads {source} from; choose another --output")
    if not ((out / "config.json").is_file() or (out / STATE_NAME).is_file()):
        return
    if not overwrite:
        if (out / "eval.json").is_file():
            state, hint = "a finished run", ""
        elif (out / STATE_NAME).is_file():
            state, hint = "an unfinished run", f"`vitkit train --resume {out}` continues it, "
        else:  # stopped while its first epoch was being saved
            state, hint = "a run stopped before its first epoch was saved (nothing to resume)", ""
        raise VitkitError(f"{out}: holds {state}; {hint}--overwrite replaces it, or choose another --output")
    if not remove:
        return
    for stale in out.glob(".*.tmp"):  # a write that a killed process never finished (fileio.atomic_write)
        stale.unlink(missing_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for folder, patterns in RUN_FOLDERS.items():
        for pattern in patterns:
            for path in (out / folder).glob(pattern):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept while it holds anything else
            (out / folder).rmdir()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Weights + config.json; ``meta`` holds classes, mean/std, img_size, recipe, metrics, ..."""
    return save_vitkit(unwrap(model), directory, **meta)


def load_checkpoint(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A model (eval mode) and what running it needs, from weights in any layout ``vitkit.weights`` reads.

    Foreign weights carry no class names, and a timm file no normalisation; they get numbered
    classes and :func:`assumed_normalisation`, with a warning that says how to record the right one.
    """
    model = load_model(path, **overrides)
    meta = dict(getattr(model, "checkpoint_meta", {}))
    chans, img_size = input_geometry(model)
    num_classes = getattr(model, "num_classes", 0)
    meta.setdefault("classes", [str(i) for i in range(num_classes)])
    if "mean" not in meta or "std" not in meta:
        meta["mean"], meta["std"] = assumed_normalisation(model, chans, path)
    meta.setdefault("in_chans", chans)
    meta.setdefault("img_size", img_size)
    classes = meta["classes"]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)) or len(set(classes)) < len(classes):
        raise VitkitError(f"{path}: config's classes must be a list of distinct names, got {str(classes)[:80]}")
    if len(meta["classes"]) != num_classes:
        raise VitkitError(f"{path}: config lists {len(meta['classes'])} classes but the head has {num_classes} outputs")
    if not all(_is_int(meta[k]) for k in ("in_chans", "img_size")):
        raise VitkitError(f"{path}: config's in_chans and img_size must be whole numbers, "
                          f"got {meta['in_chans']!r} and {meta['img_size']!r}")
    if (meta["in_chans"], meta["img_size"]) != (chans, img_size):
        raise VitkitError(f"{path}: config says {meta['in_chans']} channels at {meta['img_size']} px but the "
                          f"weights are a model for {chans} at {img_size}")
    stats = [meta["mean"], meta["std"]]
    if not all(isinstance(v, list) and len(v) == chans and all(_is_number(x) for x in v) for v in stats) \
            or min(meta["std"]) <= 0:
        raise VitkitError(f"{path}: config's mean and std need one value per input channel ({chans}), std > 0; "
                          f"got mean {meta['mean']}, std {meta['std']}")
    try:
        EvalResize.from_config(meta)
    except VitkitError as e:
        raise VitkitError(f"{path}: config's {e}") from None
    return model.eval(), meta


def assumed_normalisation(model: nn.Module, chans: int, path: str | Path) -> tuple[list[float], list[float]]:
    """For weights that do not record theirs: ImageNet's statistics for a distilled DeiT (Facebook's
    weights, the only ones with a distillation token), else 0.5 (Google's ViT weights, timm's AugReg).
    A wrong guess shifts every input, so the user is told what was assumed and how to fix it."""
    if hasattr(model, "dist_token") and chans == 3:
        mean, std, whose = list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet's, as DeiT's weights want"
    else:
        mean, std, whose = [0.5] * chans, [0.5] * chans, "0.5, as Google's ViT weights want"
    warnings.warn(f"{path}: the weights do not record their input normalisation; assuming mean and std {whose}. "
                  f"If they were trained otherwise, record it: vitkit convert {path} FOLDER --mean ... --std ..., "
                  "then use FOLDER", stacklevel=3)
    return mean, std


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
