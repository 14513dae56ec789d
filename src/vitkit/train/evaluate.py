"""Classification metrics: top-1/top-5, per-class accuracy and the confusion matrix."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..data import EvalResize, folder_root, load_dataset, make_loader, normalize
from ..data.imagenet import imagenet_folders
from ..errors import VitkitError
from ..device import pin_memory, resolve_device, to_device
from .precision import autocast


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   mean: tuple[float, ...], std: tuple[float, ...], precision: str = "fp32",
                   progress: Any = None, flip_tta: bool = False, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32, on the CPU) and targets for every batch of uint8 images, run on ``device``;
    with ``flip_tta`` the mean of the logits of each image and its mirror image (test-time
    augmentation: twice the work)."""
    model.eval()
    device = torch.device(device)
    logits, targets = [], []
    for images, labels in batches:
        x = normalize(to_device(images, device), mean, std)
        with autocast(precision, device.type):
            out = model(x).float()
            if flip_tta:
                out = (out + model(x.flip(-1)).float()) / 2
        logits.append(out.cpu())
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
                     progress: Any = None, flip_tta: bool = False, device: torch.device | str = "cpu"
                     ) -> dict[str, Any]:
    """Metrics of ``model`` (on ``device``) on a whole dataset whose classes match the model's outputs."""
    device = torch.device(device)
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory(device))
    logits, targets = predict_logits(model, loader, mean, std, precision, progress, flip_tta, device)
    return classification_metrics(logits, targets, list(dataset.classes))


def evaluate_checkpoint(checkpoint: str | os.PathLike, dataset: str | None = None, split: str | None = None, *,
                        data_dir: str | os.PathLike | None = None, precision: str = "fp32", batch_size: int = 256,
                        flip_tta: bool = False, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Metrics of a saved model, as ``vitkit eval`` reports them.

    ``dataset`` defaults to the one it was trained on and ``split`` to its held-out part, or all of
    a folder it never saw (a tenth of it, its val_fraction split, would say little). The model runs as
    ``prepare_for_inference(model, precision)`` runs it, the way ``predict`` and ``serve`` do, on
    ``device`` (see ``vitkit.device.resolve_device``)."""
    from ..inference import prepare_for_inference  # loads torch's quantisation on first use
    from ..weights import load_checkpoint

    model, cfg = load_checkpoint(checkpoint)
    spec = dataset or cfg.get("dataset")
    if not spec:
        raise VitkitError(f"{checkpoint}: the checkpoint names no dataset; pass one")
    split = split or default_split(spec, cfg.get("dataset"))
    recipe = cfg.get("recipe", {})
    ds = load_dataset(spec, split, data_dir=data_dir, img_size=cfg["img_size"], in_chans=cfg["in_chans"],
                      val_fraction=recipe.get("val_fraction", 0.1), seed=recipe.get("seed", 0),
                      resize=EvalResize.from_config(cfg))
    if list(ds.classes) != list(cfg["classes"]) and not imagenet_folders(ds.classes, cfg["classes"]):
        raise VitkitError(f"{spec}: classes {list(ds.classes)[:5]}... do not match the checkpoint's "
                          f"{cfg['classes'][:5]}...")
    device = resolve_device(device)
    fast = prepare_for_inference(model, precision, device=device)
    metrics = evaluate_dataset(fast, ds, cfg["mean"], cfg["std"], batch_size, flip_tta=flip_tta, device=device)
    return {**metrics, "dataset": spec, "split": split, "checkpoint": str(checkpoint), "flip_tta": flip_tta,
            "precision": precision, "device": str(device)}


def default_split(spec: str, trained_on: str | None) -> str:
    """The held-out part of the dataset a model trained on; "all" of a folder of class folders it did not."""
    root = folder_root(spec)
    if root is None or root == folder_root(trained_on) or (root / "train").is_dir():
        return "test"
    return "all"
