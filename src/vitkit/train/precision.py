"""Numeric precision for training and inference, per device.

On a CPU, bf16 autocast runs matmuls ~4x faster where the CPU has native bf16 units
(avx512_bf16, AMX) and measurably slower where bf16 is emulated, so ``auto`` picks bf16
only where the CPU has the instructions. On a GPU ``auto`` is bf16 autocast where the GPU
computes in bf16 (Ampere and later), else fp16 autocast, whose narrow exponent needs the
loss scaled so small gradients do not flush to zero (:func:`grad_scaler`).
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import VitkitError
from ..machine import cpu_has_bf16

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """fp32, bf16 or fp16: what ``precision`` means on ``device``."""
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise VitkitError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and kind == "cpu":
        raise VitkitError("precision fp16 is for GPUs (with a gradient scaler); on a CPU use bf16 or fp32")
    return precision


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device | str = "cpu") -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training; None where none is needed (fp32 and bf16 keep fp32's range)."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
