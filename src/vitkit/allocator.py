"""Keep freed memory for the next step instead of handing it back to the OS (glibc only).

A training step allocates and frees the same large activations every time. glibc's malloc
returns a freed block to the OS when it was mapped on its own (over the mmap threshold, which
grows up to 32 MiB) or when the free space at the top of its heap passes the trim threshold;
the next step then page-faults those pages in again, 4 KiB at a time, and the threads of one
process take their faults in turn. On the AMD EPYC of benchmarks/README.md the Fashion-MNIST
ViT's training step took 15,000-90,000 page faults in a fresh process and, with both thresholds
raised, about none, and ran ~1.2x faster (eager and compiled); a trainer's epoch gained 1.05-1.13x
(loading the dataset had already raised glibc's own dynamic threshold in that process).

The cost: a process keeps up to its peak of freed memory in its heap (at most ``TRIM_BYTES``
beyond what it uses), which suits a training or evaluation process that needs that peak again
on the next batch. Set ``VITKIT_KEEP_FREED_MEMORY=0`` to leave malloc as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_BYTES = 256 * 2 ** 20  # a block this large or larger is still mapped on its own (and unmapped on free)
TRIM_BYTES = 2 ** 30  # free space at the heap's top beyond this goes back to the OS

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they are in force.

    A no-op (False) off glibc (macOS, Windows, musl) or with ``VITKIT_KEEP_FREED_MEMORY=0``.
    Idempotent; the trainer, ``vitkit eval`` and ``vitkit predict`` call it, a hand-written loop
    may too.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("VITKIT_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    except (OSError, AttributeError):
        return False
    return _applied


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` is in force in this process (without applying it)."""
    return _applied
