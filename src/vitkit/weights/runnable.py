"""A checkpoint ready to run: the model in eval mode, and the class names, normalisation and
input size that predict, eval, explain, serve and fine-tuning all feed it alike."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalResize
from ..errors import VitkitError
from ..models import input_geometry
from .build import build_model
from .read import read_checkpoint


def load_checkpoint(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A model (eval mode) and what running it needs, from weights in any layout ``vitkit.weights`` reads.

    Foreign weights carry no class names, and a timm file no normalisation; they get numbered
    classes and :func:`assumed_normalisation`, with a warning that says how to record the right one.
    """
    model = build_model(read_checkpoint(path), **overrides)
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
        raise VitkitError(f"{path}: config's {e}") from e
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
