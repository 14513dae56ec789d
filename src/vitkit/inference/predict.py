"""Classify image files with a checkpoint: any size, mode and format Pillow reads.

Bad files never stop a batch: each one is reported with its reason and the rest go on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import EvalResize, load_resized, normalize
from ..data.folder import files_under
from ..errors import VitkitError

Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Prediction:
    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "topk": [{"class": c, "prob": p} for c, p in self.topk]}


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded recursively (linked folders too) to every non-hidden file.

    Files in a folder are not filtered by extension, so a file Pillow cannot read is
    reported rather than silently skipped.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list(files_under(item))
            if not found:
                raise VitkitError(f"{item}: folder holds no files")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise VitkitError(f"{item}: no such file or folder")
    return paths


def load_classifier(checkpoint: str | Path, precision: str = "auto", onnx: str | Path | None = None,
                    device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any], nn.Module]:
    """A checkpoint ready to classify, its config (classes, mean/std, input size) and its plain
    fp32 model (what the explain functions read attention from).

    The classifier is the model through :func:`prepare_for_inference`, or with ``onnx`` the
    exported file run by ONNX Runtime, refused unless it reproduces the checkpoint's logits. The
    classifier runs on ``device`` (see ``vitkit.device.resolve_device``; ONNX Runtime runs on the CPU).
    """
    from ..device import resolve_device
    from ..weights import load_checkpoint
    from .export import OnnxClassifier
    from .prepare import prepare_for_inference

    if Path(checkpoint).suffix == ".onnx":
        raise VitkitError(f"{checkpoint}: an ONNX file; pass the checkpoint folder it was exported from as "
                          f"the checkpoint and the file as --onnx {checkpoint}")
    model, config = load_checkpoint(checkpoint)
    if getattr(model, "num_classes", None) == 0:
        raise VitkitError(f"{checkpoint}: the weights have no classification head (features to fine-tune): train "
                          "one on your classes first, e.g. with vitkit finetune")
    if onnx is None:
        return prepare_for_inference(model, precision, device=resolve_device(device)), config, model
    if not Path(onnx).is_file():
        raise VitkitError(f"{onnx}: no such ONNX file (`vitkit export --checkpoint {checkpoint}` writes one)")
    classifier = OnnxClassifier(onnx)
    classifier.check_matches(model, config, checkpoint)
    return classifier, config, model


def top_classes(classifier: Classifier, images: torch.Tensor, config: dict[str, Any], topk: int = 5
                ) -> list[list[tuple[str, float]]]:
    """(class, probability) pairs, most likely first, for each uint8 image [B, C, H, W]."""
    classes = config["classes"]
    with torch.inference_mode():
        probs = classifier(normalize(images, config["mean"], config["std"])).float().softmax(-1)
    values, indices = probs.topk(min(topk, len(classes)), dim=1)
    return [[(classes[j], round(v, 6)) for v, j in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())]


def predict_files(classifier: Classifier, paths: list[Path], config: dict[str, Any], topk: int = 5,
                  batch_size: int = 32, on_batch: Callable[[int], None] | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; ``config`` is the checkpoint's config.json.

    ``classifier`` maps float32 images to logits: a model from ``prepare_for_inference``
    (any precision) or an ``OnnxClassifier``.
    """
    resize = EvalResize.from_config(config)  # the crop pretrained weights were evaluated with
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors: dict[int, torch.Tensor] = {}
        results = [Prediction(str(p)) for p in chunk]
        for i, path in enumerate(chunk):
            try:
                tensors[i] = load_resized(path, config["img_size"], config["in_chans"], resize)
            except VitkitError as e:
                results[i].error = str(e)
        if tensors:
            for i, top in zip(tensors, top_classes(classifier, torch.stack(list(tensors.values())), config, topk)):
                results[i].topk = top
        if on_batch:
            on_batch(len(chunk))
        yield from results
