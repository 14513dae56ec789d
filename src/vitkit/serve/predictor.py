"""What every request of `vitkit serve` shares: the classifier, its checkpoint's config and the
plain model /explain reads attention from.

Decoding is a method of its own because the server runs it on a pool of threads, off the model's
thread, while :meth:`Predictor.classify` runs a whole batch of decoded images in one forward pass.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import EvalResize, normalize, resized_from_bytes
from ..errors import VitkitError
from ..explain import attention_rollout
from ..explain.figures import rollout_strip
from ..explain.tokens import attention_modules
from ..inference.predict import Classifier, top_classes

TopK = list[tuple[str, float]]


class Predictor:
    """A classifier, its checkpoint's config and (optionally) the plain model.

    ``model``, the checkpoint's plain model, enables /explain (attention rollout) when it has
    attention layers; the classifier may be a prepared copy or an ONNX session, which hide them.
    """

    def __init__(self, classifier: Classifier, config: dict[str, Any], checkpoint: str, runtime: str,
                 topk: int = 5, model: nn.Module | None = None):
        self.classifier, self.config, self.topk = classifier, config, topk
        self.model = model if model is not None and _has_attention(model) else None
        self.classes = list(config["classes"])
        self.about = {"checkpoint": Path(checkpoint).name or checkpoint,  # the run's name, not where it lives
                      "runtime": runtime, "classes": self.classes,
                      "img_size": config["img_size"], "in_chans": config["in_chans"],
                      "explain": self.model is not None}
        self.resize = EvalResize.from_config(config)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """A forward pass per batch size now, so the first users do not wait for kernels to be prepared."""
        size, chans = self.config["img_size"], self.config["in_chans"]
        for batch in batch_sizes:
            self.classify(torch.zeros(batch, chans, size, size, dtype=torch.uint8), [1] * batch)

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        """The upload as the model's uint8 input [C, S, S]; a VitkitError naming ``name`` if unreadable."""
        return resized_from_bytes(data, name, self.config["img_size"], self.config["in_chans"], self.resize)

    def classify(self, images: torch.Tensor, topks: list[int]) -> list[TopK]:
        """:func:`~vitkit.inference.predict.top_classes` for a batch of uint8 images [B, C, H, W] in one
        forward pass, image i keeping ``topks[i]`` of its pairs (requests in one batch ask for different k)."""
        rows = top_classes(self.classifier, images, self.config, max(topks))
        return [row[:n] for row, n in zip(rows, topks)]

    def check_explainable(self, explain: bool) -> None:
        if explain and self.model is None:
            raise VitkitError("this checkpoint has no attention layers to explain (a CNN?)")

    def explain_png(self, image: torch.Tensor) -> bytes:
        """A PNG of the image [C, S, S] beside its attention-rollout overlay: which patches the prediction used."""
        self.check_explainable(True)
        with torch.no_grad():
            heat = attention_rollout(self.model, normalize(image[None], self.config["mean"], self.config["std"]))[0]
        strip = rollout_strip(heat, image.permute(1, 2, 0).numpy())
        buffer = io.BytesIO()
        Image.fromarray((strip * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()


def _has_attention(model: nn.Module) -> bool:
    try:
        return bool(attention_modules(model))
    except VitkitError:  # a CNN: nothing to explain
        return False


def load_predictor(source: str, precision: str = "auto", onnx: str | Path | None = None, topk: int = 5,
                   device: str = "cpu") -> Predictor:
    """The predictor for a checkpoint folder or model name, run as `vitkit predict` runs it."""
    from ..inference.predict import load_classifier

    classifier, config, model = load_classifier(source, precision, onnx, device=device)
    runtime = (f"onnxruntime ({Path(onnx).name})" if onnx
               else f"torch, {getattr(classifier, 'precision', precision)}")
    return Predictor(classifier, config, str(source), runtime, topk, model)
