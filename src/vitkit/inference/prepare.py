"""Turn a trained model into one that runs fast on a CPU, behind an fp32-in, fp32-out call.

Measured on a 2-core Xeon with AMX (benchmarks/README.md): bf16 *weights* beat bf16
autocast (autocast re-casts every weight on every call) and run ViT-B/16 ~3x faster than
fp32; packing the Linear weights once in oneDNN's blocked layout, with the bias and the
MLP's GELU fused into the matmul, adds ~1.3x on top (eager ``addmm`` re-lays out the
weight and copies the bias into the output on every call). Dynamic int8 (oneDNN, no AMX)
is slower than bf16 there, but is the fast path on CPUs with avx512_vnni and no AMX (on
the AMD EPYC, 1.4x bf16 weights). ``torch.inference_mode`` is always on: free speed for a
model nobody trains.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..allocator import freed_memory_kept
from ..errors import VitkitError
from ..models.fuse import fuse_batchnorm, has_fusable
from ..models.layers import Attention, Mlp
from ..machine import cpu_has_bf16

PRECISIONS = ("fp32", "bf16", "int8", "auto", "fp16")  # fp16: GPUs


class InferenceModel(nn.Module):
    """Wraps a prepared model so callers pass float32 images and get float32 logits.

    ``model`` is what runs (bf16 weights, a quantized copy, a compiled module); ``eager``
    is the same model uncompiled, used when compilation fails on the first call
    (``torch.compile`` is lazy, so failures surface there, not in ``torch.compile``).
    """

    def __init__(self, model: nn.Module, precision: str, eager: nn.Module | None = None,
                 slice_images: int | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.model = model
        self.precision = precision
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.device = torch.device(device)  # where the model runs; logits come back where the images were
        self._eager = [eager]  # a list so the eager twin is not registered a second time as a submodule
        self.slice_images = slice_images  # see slice_size and forward

    @property
    def compiled(self) -> bool:
        return self._eager[0] is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Big batches in slices unless the process keeps freed memory (see ``slice_size``), decided
        at each call, since a caller may keep freed memory after preparing the model."""
        if x.shape[0] == 0:  # int8's quantized kernels cannot take an empty batch: one image gives the shape
            return self.run(x.new_zeros(1, *x.shape[1:]), None)[:0]
        return self.run(x, None if freed_memory_kept() else self.slice_images)

    def run(self, x: torch.Tensor, slice_images: int | None) -> torch.Tensor:
        """``x`` in equal slices of at most ``slice_images`` images (none tiny); None: whole."""
        if slice_images and x.shape[0] > slice_images:
            return torch.cat([self._forward(part) for part in x.tensor_split(-(-x.shape[0] // slice_images))])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        home = x.device
        x = x.to(self.device, self.input_dtype, non_blocking=self.device.type == "cuda")
        with torch.inference_mode():
            if self._eager[0] is None:
                return self.model(x).float().to(home)
            try:
                return self.model(x).float().to(home)
            except Exception as e:  # any backend failure: fall back once, never fail the prediction
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              "running the eager model instead", RuntimeWarning, stacklevel=2)
                self.model, self._eager[0] = self._eager[0], None
                return self.model(x).float().to(home)


class PackedLinear(nn.Module):
    """``nn.Linear`` (optionally followed by exact GELU) as one oneDNN call on a pre-packed weight."""

    def __init__(self, linear: nn.Linear, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.attr = "gelu" if gelu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, self.attr, [],
                                                  "none" if self.attr == "gelu" else "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.attr}"


# glibc gives blocks over 32 MiB back to the OS on every free, so a batch whose activations are
# bigger page-faults them in afresh on every call (unless the process keeps freed memory).
SLICE_BYTES = 24 * 2 ** 20


def slice_size(model: nn.Module, precision: str) -> int | None:
    """How many images to run at once so the widest activation stays under ``SLICE_BYTES``.

    ViT-B/16's MLP makes 2.4 MB of fp32 activations per image (197 tokens x 3072), 77 MB for a
    batch of 32: there a plain GELU ran at the speed of one page fault per 4 KiB, and int8
    ViT-B/16 at batch 32 ran 1.22x faster in 4 slices of 8, ViT-S/16 1.34x in 2 slices, on the
    AMD EPYC (benchmarks/results/slices-plain.json). Slicing when nothing spills costs speed
    (small GEMMs), so small models, bf16 ViT-S and CNNs keep whole batches. None: no slicing. A process that keeps freed memory
    (``vitkit.keep_freed_memory``, as ``vitkit predict`` does) takes no such faults and runs
    whole batches instead: there int8 ViT-B/16 and ViT-S/16 at batch 32 ran 1.05-1.12x faster
    whole than in slices, bf16 ViT-B/16 as fast within noise (benchmarks/slices.py).
    """
    embed = getattr(model, "patch_embed", None)
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    if embed is None or not widths:
        return None
    tokens = embed.num_patches + getattr(model, "num_prefix_tokens", 0)
    per_image = tokens * max(widths) * (2 if precision == "bf16" else 4)
    return max(1, SLICE_BYTES // per_image)


def _packing_works(dtype: torch.dtype) -> bool:
    """oneDNN's private linear ops exist only in mkldnn builds of torch; probe instead of trusting version numbers."""
    try:
        lin = nn.Linear(8, 4).to(dtype)
        x = torch.randn(3, 8, dtype=dtype)
        out = PackedLinear(lin, gelu=True)(x)
        return torch.allclose(out.float(), F.gelu(lin(x)).float(), atol=0.05)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace (in place) every ``nn.Linear`` with a ``PackedLinear``; fold exact GELU into vitkit ``Mlp.fc1``."""
    for module in list(model.modules()):
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none" \
                and isinstance(module.fc1, nn.Linear):
            module.fc1, module.act = PackedLinear(module.fc1, gelu=True), nn.Identity()
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy with every ``nn.Linear`` dynamically quantized to int8 (weights per tensor, activations per batch).

    The weights are packed for oneDNN's kernels where torch has them: on a 2-core AMD EPYC
    (avx512_vnni) ViT-B/16 at batch 32 ran 1.10x faster than with the default x86/fbgemm
    packing, side by side. A packed weight keeps its engine, so the process-wide
    ``torch.backends.quantized.engine`` is restored afterwards.
    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao (not a
    vitkit dependency) but still works in torch 2.13; its warning is silenced here because
    the user chose int8 knowingly and cannot act on it.
    """
    engines = torch.backends.quantized.supported_engines
    previous = torch.backends.quantized.engine
    try:
        if "onednn" in engines:
            torch.backends.quantized.engine = "onednn"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
    finally:
        torch.backends.quantized.engine = previous


def attend_in_bf16(model: nn.Module) -> nn.Module:
    """Run every vitkit ``Attention``'s QKᵀ, softmax and ·V as bf16 matmuls (see ``Attention``)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.matmul_dtype = torch.bfloat16
    return model


def prepare_for_inference(model: nn.Module, precision: str = "fp32", compile: bool = False,
                          threads: int | None = None, device: torch.device | str = "cpu") -> InferenceModel:
    """Return ``model`` ready to predict fast: eval mode, chosen precision, optionally compiled.

    ``precision``: ``fp32``; ``bf16`` (a bf16 copy of the weights: faster and lighter than
    autocast; logits differ from fp32 by ~1% of their range); ``int8`` (dynamic
    quantization of the Linear layers); ``auto`` (bf16 where the CPU has bf16 units, else
    fp32). fp32 and bf16 Linear weights are pre-packed for oneDNN (see ``pack_linears``);
    bf16 and int8 (on CPUs with bf16 units) compute attention as bf16 matmuls (``attend_in_bf16``).
    BatchNorms that a layer can absorb (LeViT's, CvT's projections) are folded into it first
    (``vitkit.models.fuse``), in fp32.
    ``compile=True`` instead hands the model to ``torch.compile`` with weight freezing
    (inductor packs and fuses itself); if compilation fails, a warning is given once and
    the eager model runs. ``threads`` sets ``torch.set_num_threads`` (process-wide). The
    caller's model is only put in eval mode: the prepared model is a copy.
    On a GPU (``device``) the model runs as a plain bf16 or fp16 copy (``auto``: bf16 where the
    GPU has it, else fp16), since the oneDNN packing and int8 kernels above are CPU code.
    """
    if precision not in PRECISIONS:
        raise VitkitError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if threads is not None:
        if threads < 1:
            raise VitkitError(f"threads must be a positive number, got {threads}")
        torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type != "cpu":
        return _prepare_on_gpu(model, precision, compile, device)
    if precision == "fp16":
        raise VitkitError("precision fp16 is for GPUs; on a CPU use bf16 (as fast where the CPU has bf16 units)")
    if precision == "auto":
        precision = "bf16" if cpu_has_bf16() else "fp32"
    model = model.eval()
    slices = slice_size(model, precision)
    if precision == "int8":
        model = quantize_int8(fuse_batchnorm(copy.deepcopy(model)) if has_fusable(model) else model)
        if cpu_has_bf16():
            model = attend_in_bf16(model)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = fuse_batchnorm(copy.deepcopy(model)).to(dtype)
        if not compile and _packing_works(dtype):
            model = pack_linears(model)
        if precision == "bf16":
            model = attend_in_bf16(model)
    if not compile:
        return InferenceModel(model, precision, slice_images=slices)
    try:
        with warnings.catch_warnings():  # torch's own import-time deprecation notices, not the user's business
            warnings.simplefilter("ignore", DeprecationWarning)
            compiled = torch.compile(model, options={"freezing": True})
    except Exception as e:
        warnings.warn(f"torch.compile is unavailable ({type(e).__name__}: {e}); running the eager model",
                      RuntimeWarning, stacklevel=2)
        return InferenceModel(model, precision, slice_images=slices)
    return InferenceModel(compiled, precision, eager=model, slice_images=slices)


def _prepare_on_gpu(model: nn.Module, precision: str, compile: bool, device: torch.device) -> InferenceModel:
    """A half-precision (or fp32) copy of ``model`` on ``device``, compiled if asked."""
    from ..train.precision import resolve_precision

    if precision == "int8":
        raise VitkitError(f"precision int8 (dynamic quantization) runs on CPUs only; on {device} use bf16, fp16 "
                          "or auto")
    precision = resolve_precision(precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model = fuse_batchnorm(copy.deepcopy(model.eval())).to(device, dtype)
    if not compile:
        return InferenceModel(model, precision, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(model)
    return InferenceModel(compiled, precision, eager=model, device=device)
