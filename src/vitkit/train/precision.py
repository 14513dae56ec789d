"""Numeric precision for training and inference on CPU.

bf16 autocast runs matmuls ~4x faster on CPUs with native bf16 units (avx512_bf16,
AMX) and measurably slower where bf16 is emulated, so ``auto`` picks bf16 only where
the CPU has the instructions.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    return any(f in _cpuinfo() for f in (" avx512_bf16", " amx_bf16"))


def cpu_is_intel() -> bool:
    return "GenuineIntel" in _cpuinfo()


def cpu_name() -> str:
    """The CPU's model name: training times mean little without it (an AMX Xeon ran the demo 1.5x faster
    than an AMD EPYC with the same two cores)."""
    lines = _cpuinfo().splitlines()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")


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
