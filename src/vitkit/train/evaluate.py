"""Classification metrics: top-1/top-5, per-class accuracy and the confusion matrix."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..data import make_loader, normalize
from .precision import autocast


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   mean: tuple[float, ...], std: tuple[float, ...], precision: str = "fp32",
                   progress: Any = None, flip_tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32) and targets for every batch of uint8 images; with ``flip_tta`` the mean of
    the logits of each image and its mirror image (test-time augmentation: twice the work)."""
    model.eval()
    logits, targets = [], []
    for images, labels in batches:
        x = normalize(images, mean, std)
        with autocast(precision):
            out = model(x).float()
            if flip_tta:
                out = (out + model(x.flip(-1)).float()) / 2
        logits.append(out)
        targets.append(labels)
        if progress is not None:
            progress.update(len(labels))
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Everything ``vitkit eval --json`` reports; accuracies are fractions in [0, 1]."""
    k = len(classes)
    top = logits.topk(min(5, k), dim=1).indices
    pred = top[:, 0]
    confusion = torch.bincount(targets * k + pred, minlength=k * k).reshape(k, k)
    support = confusion.sum(1)
    per_class = (confusion.diag().double() / support.clamp(min=1)).tolist()
    return {
        "top1": (pred == targets).double().mean().item(),
        "top5": (top == targets[:, None]).any(1).double().mean().item(),
        "loss": nn.functional.cross_entropy(logits, targets).item(),
        "num_samples": len(targets),
        "per_class": {name: acc for name, acc in zip(classes, per_class)},
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


def evaluate_dataset(model: nn.Module, dataset: Any, mean: tuple[float, ...], std: tuple[float, ...],
                     batch_size: int = 256, precision: str = "fp32", workers: int | None = None,
                     progress: Any = None, flip_tta: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` on a whole dataset whose classes match the model's outputs."""
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=workers)
    logits, targets = predict_logits(model, loader, mean, std, precision, progress, flip_tta)
    return classification_metrics(logits, targets, list(dataset.classes))
