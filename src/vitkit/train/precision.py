"""Numeric precision for training and inference on CPU.

bf16 autocast runs matmuls ~4x faster on CPUs with native bf16 units (avx512_bf16,
AMX) and measurably slower where bf16 is emulated, so ``auto`` picks bf16 only where
the CPU has the instructions.
"""
from __future__ import annotations

import contextlib
import torch

from ..machine import cpu_has_bf16


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" or cpu_has_bf16() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
