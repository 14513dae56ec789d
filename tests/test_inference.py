"""prepare_for_inference and export: every path runs and agrees with the fp32 model."""
from __future__ import annotations

import warnings

import pytest
import torch

from vitkit.errors import VitkitError
from vitkit.inference import InferenceModel, OnnxClassifier, export, prepare_for_inference
from vitkit.inference.prepare import PackedLinear, slice_size
from vitkit.models import create_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("vit_mini_patch4_28").eval()
    for p in m.parameters():  # larger weights than the init so logits spread and top-1 is meaningful
        p.data.normal_(0, 0.1)
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fp32_matches_the_model(model, images, reference):
    prepared = prepare_for_inference(model, "fp32")
    out = prepared(images)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)  # oneDNN sums in another order than MKL
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 0  # the caller's model is untouched


def test_packed_linear_fuses_gelu(model):
    prepared = prepare_for_inference(model, "fp32")
    packed = [m for m in prepared.modules() if isinstance(m, PackedLinear)]
    if not packed:
        pytest.skip("this torch build has no oneDNN linear ops; the plain model runs")
    assert sum(m.attr == "gelu" for m in packed) == len(model.blocks)
    assert not any(type(m) is torch.nn.Linear for m in prepared.modules())


def test_bf16_close_to_fp32(model, images, reference):
    prepared = prepare_for_inference(model, "bf16")
    out = prepared(images)
    assert out.dtype == torch.float32
    assert _relative_error(out, reference) < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not converted


def test_bf16_attention_matmuls_agree_with_fused_attention():
    from vitkit.models import Attention
    torch.manual_seed(0)
    attn, x = Attention(64, num_heads=4).eval(), torch.randn(2, 10, 64)
    with torch.no_grad():
        fused = attn(x)
        attn.matmul_dtype = torch.bfloat16
        out = attn(x)
        head = attn(x, queries=1)
    assert out.dtype == torch.float32 and not torch.equal(out, fused)  # the bf16 path did run
    torch.testing.assert_close(out, fused, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(head, out[:, :1])


def test_reduced_precisions_attend_in_bf16(model):
    from vitkit.models import Attention
    from vitkit.machine import cpu_has_bf16
    expected = {"fp32": None, "bf16": torch.bfloat16, "int8": torch.bfloat16 if cpu_has_bf16() else None}
    for precision, dtype in expected.items():
        prepared = prepare_for_inference(model, precision)
        assert {m.matmul_dtype for m in prepared.modules() if isinstance(m, Attention)} == {dtype}, precision
    assert {m.matmul_dtype for m in model.modules() if isinstance(m, Attention)} == {None}  # caller's model


def test_int8_agrees_with_fp32(model, images, reference):
    engine = torch.backends.quantized.engine
    out = prepare_for_inference(model, "int8")(images)
    assert torch.backends.quantized.engine == engine  # packing for oneDNN leaves the process setting alone
    assert out.dtype == torch.float32
    assert _relative_error(out, reference) < 0.1
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.8


def test_big_batches_run_in_slices_with_the_same_result(monkeypatch):
    """ViT-B/16's fp32 MLP activations (2.4 MB per image) would pass 24 MiB beyond 10 images."""
    big = create_model("vit_base_patch16_224", depth=1)
    assert slice_size(big, "fp32") == 10 and slice_size(big, "bf16") == 20
    assert slice_size(create_model("vit_mini_patch4_28"), "fp32") > 256
    assert slice_size(create_model("resnet_mini_28"), "fp32") is None
    prepared = prepare_for_inference(big, "fp32")
    assert prepared.slice_images == 10
    parts, run = [], prepared._forward
    prepared._forward = lambda part: parts.append(len(part)) or run(part)
    x = torch.randn(23, 3, 224, 224)
    monkeypatch.setattr("vitkit.inference.prepare.freed_memory_kept", lambda: False)
    sliced = prepared(x)
    assert parts == [8, 8, 7]
    monkeypatch.setattr("vitkit.inference.prepare.freed_memory_kept", lambda: True)
    whole = prepared(x)  # decided at each call: a process keeping freed memory takes no faults, whole batches
    assert parts == [8, 8, 7, 23]
    torch.testing.assert_close(sliced, whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_an_empty_batch_gives_empty_logits(model, precision):
    out = prepare_for_inference(model, precision)(torch.randn(0, 1, 28, 28))
    assert out.shape == (0, model.num_classes) and out.dtype == torch.float32


def test_auto_picks_a_supported_precision(model, images):
    prepared = prepare_for_inference(model, "auto")
    assert prepared.precision in ("fp32", "bf16")
    assert prepared(images).shape == (16, 10)


@pytest.mark.slow  # a cold inductor cache compiles C++ for ~30 s
def test_compile_works_or_falls_back(model, images, reference):
    prepared = prepare_for_inference(model, "fp32", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warning, if this machine cannot compile
        out = prepared(images[:2])
    torch.testing.assert_close(out, reference[:2], atol=1e-4, rtol=1e-4)


def test_compile_failure_falls_back_with_one_warning(model, images, reference):
    def broken(x):
        raise RuntimeError("no C++ compiler")

    prepared = InferenceModel(broken, "fp32", eager=model)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = prepared(images)
    torch.testing.assert_close(out, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the eager model is used from now on
        prepared(images)


@pytest.mark.parametrize("bad", [{"precision": "fp8"}, {"threads": 0}])
def test_bad_options_are_clear_errors(model, bad):
    with pytest.raises(VitkitError, match="precision|threads"):
        prepare_for_inference(model, **bad)


def test_onnx_export_parity(model, images, reference, tmp_path):
    path = export(model, tmp_path / "mini.onnx")
    runner = OnnxClassifier(path, threads=1)
    out = runner(images)  # a batch size other than the traced one
    assert out.dtype == torch.float32
    assert (out - reference).abs().max().item() <= 1e-4
    with pytest.raises(VitkitError, match=r"mini\.onnx: takes images of shape \[batch, 1, 28, 28\], got \[2, 1, 56, 28\]"):
        runner(torch.randn(2, 1, 56, 28))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_parity(model, images, reference, tmp_path):
    path = export(model, tmp_path / "mini.pt", format="torchscript")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded(images)
    assert (out - reference).abs().max().item() <= 1e-5


def test_a_dynamic_size_model_exports_to_onnx_at_another_size(tmp_path):
    """ONNX has no antialiased bicubic: the position embeddings resampled for the traced size go in as
    constants, the numbers the PyTorch model computes on the fly."""
    model = create_model("vit_mini_patch4_28", dynamic_img_size=True).eval()
    x = torch.randn(3, 1, 56, 40)
    runner = OnnxClassifier(export(model, tmp_path / "m.onnx", img_size=(56, 40)), threads=1)
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max().item() <= 1e-4


def test_a_cnn_exports_at_the_size_given(tmp_path):
    x = torch.randn(2, 3, 64, 64)
    model = create_model("resnet18", num_classes=4).eval()  # registered without a size
    runner = OnnxClassifier(export(model, tmp_path / "r.onnx", img_size=64), threads=1)
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max().item() <= 1e-4


def test_export_errors(model, tmp_path):
    with pytest.raises(VitkitError, match="format"):
        export(model, tmp_path / "m.x", format="tflite")
    with pytest.raises(VitkitError, match="no such ONNX file"):
        OnnxClassifier(tmp_path / "missing.onnx")
