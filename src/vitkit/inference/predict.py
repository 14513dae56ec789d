"""Classify image files with a checkpoint: any size, mode and format Pillow reads.

Bad files never stop a batch: each one is reported with its reason and the rest go on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import load_resized, normalize
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
    """Files as given; folders expanded recursively to every non-hidden file (sorted).

    Files in a folder are not filtered by extension, so a file Pillow cannot read is
    reported rather than silently skipped.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise VitkitError(f"{item}: folder holds no files")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise VitkitError(f"{item}: no such file or folder")
    return paths


def predict_files(classifier: Classifier, paths: list[Path], config: dict[str, Any], topk: int = 5,
                  batch_size: int = 32, on_batch: Callable[[int], None] | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; ``config`` is the checkpoint's config.json.

    ``classifier`` maps float32 images to logits: a model from ``prepare_for_inference``
    (any precision) or an ``OnnxClassifier``.
    """
    classes, mean, std = config["classes"], config["mean"], config["std"]
    k = min(topk, len(classes))
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors: dict[int, torch.Tensor] = {}
        results = [Prediction(str(p)) for p in chunk]
        for i, path in enumerate(chunk):
            try:
                tensors[i] = load_resized(path, config["img_size"], config["in_chans"])
            except VitkitError as e:
                results[i].error = str(e)
        if tensors:
            batch = normalize(torch.stack(list(tensors.values())), mean, std)
            with torch.inference_mode():
                probs = classifier(batch).float().softmax(-1)
            values, indices = probs.topk(k, dim=1)
            for row, i in enumerate(tensors):
                results[i].topk = [(classes[j], round(v, 6)) for v, j in zip(values[row].tolist(), indices[row].tolist())]
        if on_batch:
            on_batch(len(chunk))
        yield from results
