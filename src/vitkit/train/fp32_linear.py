"""fp32 training where MKL takes its slow path: linear layers through oneDNN's own kernels.

MKL chooses its fast GEMM kernels by CPU vendor. On the AMD EPYC of benchmarks/README.md,
its fp32 GEMM ran at 90-130 GFLOP/s on a ViT's shapes (12,800 tokens x 128 -> 384) where
oneDNN, which torch also ships, ran the forward product and the input gradient 1.4-1.7x
faster. The weight gradient (a product over the token axis) MKL ran as fast, so it stays
there. Same products in fp32, so the same training up to rounding (gradients agree to ~1e-6).
bf16 needs none of this: torch already sends bf16 matmuls to oneDNN.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..machine import cpu_is_intel


@torch.library.custom_op("vitkit::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` computed by oneDNN (an opaque op, so ``torch.compile`` keeps it rather than lowering to MKL)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _save_inputs(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = onednn_linear(grad, weight.t().contiguous(), None) if ctx.needs_input_grad[0] else None
    rows = grad.reshape(-1, grad.shape[-1])
    grad_w = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    grad_b = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_save_inputs)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU calls go through ``onednn_linear``; anything else (bf16 autocast,
    other devices) takes ``F.linear``. Same parameters and state-dict keys as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


@lru_cache(maxsize=1)
def onednn_pays_off() -> bool:
    """True off Intel CPUs (where MKL runs its generic path) when this torch build has oneDNN's linear op."""
    if cpu_is_intel():
        return False
    try:
        lin = nn.Linear(8, 4)
        x = torch.randn(3, 8)
        return torch.allclose(onednn_linear(x, lin.weight, lin.bias), lin(x), atol=1e-5)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def use_onednn_linears(model: nn.Module) -> int:
    """Turn (in place) every plain ``nn.Linear`` of ``model`` into a ``OneDNNLinear``; returns how many."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    for m in linears:
        m.__class__ = OneDNNLinear  # no new state: parameters, hooks and state-dict keys stay as they are
    return len(linears)
