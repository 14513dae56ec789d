"""Facts about the machine that choose code paths: which CPU this is, what its vector units do.

At the bottom of the package: training, inference and serving all ask, none of them owns it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


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
