"""Training: configuration, optimiser and schedule, the epoch loop, checkpoints, evaluation."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .engine import Trainer, train
from .evaluate import classification_metrics, evaluate_dataset, predict_logits
from .precision import autocast, resolve_precision

__all__ = ["TrainConfig", "Trainer", "train", "load_checkpoint", "save_checkpoint", "classification_metrics",
           "evaluate_dataset", "predict_logits", "autocast", "resolve_precision"]
