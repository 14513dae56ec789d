"""keep_freed_memory: a freed block is reused without page faults (checked in a fresh process)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# 48 MiB: over glibc's largest dynamic mmap threshold (32 MiB), so by default each allocation
# is mapped afresh and every one of its 4 KiB pages faults in when written.
PROBE = """
import json, resource, torch, vitkit

def faults_per_allocation():
    counts = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(12 * 2 ** 20)
        block.fill_(1.0)
        del block
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[-4:]  # the heap settles within about 8 rounds (posix_memalign pads each request)

from vitkit.allocator import freed_memory_kept
default, state_before = min(faults_per_allocation()), freed_memory_kept()
kept = vitkit.keep_freed_memory()
print(json.dumps(dict(default=default, kept=kept, after=max(faults_per_allocation()),
                      state_before=state_before, state_after=freed_memory_kept())))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    result = _probe(VITKIT_KEEP_FREED_MEMORY="1")
    assert result["kept"] is True
    assert result["state_before"] is False and result["state_after"] is True
    assert result["default"] > 10_000  # 12,288 pages of 4 KiB mapped afresh each time
    assert result["after"] < 100


def test_opting_out_leaves_malloc_as_it_is():
    result = _probe(VITKIT_KEEP_FREED_MEMORY="0")
    assert result["kept"] is False and result["state_after"] is False
    assert result["after"] > 10_000
