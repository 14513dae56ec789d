"""Training: configuration, optimiser and schedule, the epoch loop, checkpoints, evaluation."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import classification_metrics, evaluate_checkpoint, evaluate_dataset, predict_logits
from .precision import autocast, resolve_precision

if TYPE_CHECKING:
    from .engine import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train", "load_checkpoint", "save_checkpoint", "classification_metrics",
           "evaluate_checkpoint", "evaluate_dataset", "predict_logits", "autocast", "resolve_precision"]


def __getattr__(name: str):
    """``Trainer`` and ``train`` on first use: the epoch loop imports augmentation (kornia) and plotting
    (matplotlib), ~0.8 s that `import vitkit`, `predict` and `serve` never need."""
    if name in ("Trainer", "train"):
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
