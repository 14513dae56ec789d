"""Export a model to ONNX or TorchScript, and run an exported ONNX file.

Both formats keep the batch dimension free, so one file serves any batch size. ONNX uses
torch's TorchScript-based exporter: the newer ``dynamo=True`` exporter needs
``onnxscript``, which vitkit does not require.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from ..errors import VitkitError

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on


def _sample_input(model: nn.Module, img_size: int | tuple[int, int] | None) -> torch.Tensor:
    """A 2-image batch of the model's input size (``img_size`` overrides it for dynamic-size models).

    A ViT knows its size from its patch embedding; a vitkit CNN records the size it was built for."""
    source = getattr(model, "patch_embed", model)
    size = getattr(source, "img_size", None) if img_size is None else img_size
    if not hasattr(source, "in_chans") or size is None:
        raise VitkitError(f"cannot tell the input size of this {type(model).__name__}; pass img_size, or export "
                          "a vitkit model")
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(2, source.in_chans, h, w)


@contextlib.contextmanager
def _position_embeddings_as_constant(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """A dynamic-size ViT traced at another size resamples its position embeddings with an antialiased
    bicubic (timm's), which ONNX has no operator for. The trace fixes the size anyway, so they are
    resampled once here, by the same function, and enter the graph as a constant: the same numbers."""
    if not getattr(model, "dynamic_img_size", False):
        yield
        return
    from ..models import vit

    _, h, w, _ = model.patch_embed(x).shape
    resampled = vit.resample_abs_pos_embed(model.pos_embed, (h, w), model.grid_size, model.pos_embed_prefix)
    with mock.patch.object(vit, "resample_abs_pos_embed", lambda *args, **kwargs: resampled):
        yield


def export(model: nn.Module, path: str | Path, format: str = "onnx",
           img_size: int | tuple[int, int] | None = None) -> Path:
    """Write ``model`` (fp32, as trained; not a ``prepare_for_inference`` result) to ``path``.

    ``img_size`` fixes the traced image size for models built with ``dynamic_img_size``;
    the default is the size the model was built for. Returns the path written.
    """
    if format not in FORMATS:
        raise VitkitError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    x = _sample_input(model, img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about the input-shape checks in PatchEmbed (fixed at trace time, as intended)
            # and about its own deprecation; neither is something a user of vitkit can act on.
            warnings.simplefilter("ignore")
            model.eval()
            if format == "onnx":
                with _position_embeddings_as_constant(model, x):
                    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                                      input_names=["images"], output_names=["logits"],
                                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
            else:
                torch.jit.save(torch.jit.trace(model, x), str(path))
    finally:
        model.train(was_training)  # the caller's model as it was (it is traced in eval mode)
    return path


class OnnxClassifier:
    """Runs an exported ONNX model with ONNX Runtime: float32 NCHW tensor in, logits tensor out."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise VitkitError("the ONNX runtime needs onnxruntime: pip install 'vitkit[onnx]'") from None
        if not Path(path).is_file():
            raise VitkitError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise VitkitError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:200]})") from e
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape  # e.g. ['batch', 3, 224, 224]
        self.input_shape = tuple(d if isinstance(d, int) else None for d in shape[1:])
        classes = self.session.get_outputs()[0].shape[-1]  # e.g. ['batch', 10]
        self.num_classes = classes if isinstance(classes, int) else None
        self.path = Path(path)

    def check_matches(self, model: nn.Module, config: dict, checkpoint: str | Path) -> None:
        """Refuse an ONNX file exported from another model, whose labels would silently be wrong:
        its shapes must match the checkpoint's, and so must its logits on one sample image."""
        expected = (config["in_chans"], config["img_size"], config["img_size"])
        if self.input_shape != expected or self.num_classes not in (None, len(config["classes"])):
            raise VitkitError(f"{self.path}: takes {list(self.input_shape)} images and gives {self.num_classes} "
                              f"classes, but {checkpoint} is {list(expected)} with {len(config['classes'])}: "
                              "export this checkpoint again")
        x = torch.randn(1, *expected, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want = model.eval()(x).float()
        got, tolerance = self(x), 1e-3 * (1 + want.abs().max().item())
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=tolerance):
            raise VitkitError(f"{self.path}: its logits differ from {checkpoint}'s (exported from another model or "
                              "an earlier run?); export this checkpoint again")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        given = tuple(x.shape[1:])
        if x.ndim != 4 or any(want is not None and want != got for want, got in zip(self.input_shape, given)):
            raise VitkitError(f"{self.path}: takes images of shape [batch, {', '.join(map(str, self.input_shape))}], "
                              f"got {list(x.shape)}")
        x = x.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])
