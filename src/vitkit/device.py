"""Which accelerator a command runs on, and how batches reach it.

Every command that runs a model takes ``--device auto|cpu|cuda|cuda:N|mps``. ``auto`` takes a
GPU when PyTorch sees one, so the same command trains on a laptop and on a GPU node; under
``torchrun`` each process takes the GPU its ``LOCAL_RANK`` names. On CUDA, TF32 matmuls are
allowed (Ampere and later run fp32 matmuls ~8x faster at ~1e-3 relative error, which training
never notices) and copies from pinned host memory are asynchronous. On a CPU nothing changes:
these helpers are the identity there.
"""
from __future__ import annotations

import os
import re

import torch

from .errors import VitkitError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEVICE_HELP = ("auto (a GPU when PyTorch sees one; under torchrun the process's LOCAL_RANK GPU), cpu, cuda, "
               "cuda:N or mps")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``name`` asks for; a GPU that is not there is a ``VitkitError``, not a
    crash at the first tensor moved to it."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return _local_cuda()
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise VitkitError("--device mps: this PyTorch sees no Apple GPU (MPS); use --device cpu or auto")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise VitkitError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (" (a CPU-only build)" if torch.version.cuda is None else "")
        raise VitkitError(f"--device {name}: no CUDA GPU is visible to {build}; check nvidia-smi and "
                          "CUDA_VISIBLE_DEVICES, install a CUDA build of torch, or use --device cpu")
    if match.group(1) is None:
        return _local_cuda()
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise VitkitError(f"--device {name}: only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def _local_cuda() -> torch.device:
    """cuda:LOCAL_RANK under torchrun (one process per GPU), else the current GPU."""
    index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    count = torch.cuda.device_count()
    if index >= count:
        raise VitkitError(f"LOCAL_RANK {index} but only {count} CUDA GPU(s) are visible: start at most {count} "
                          "processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def setup_device(device: torch.device, deterministic: bool = False) -> None:
    """Make ``device`` this process's GPU and allow its fast fp32 paths (TF32 matmuls, cuDNN's
    autotuner); ``deterministic`` gives the autotuner up and asks torch for reproducible kernels,
    so that a resumed GPU run ends exactly where the uninterrupted one does (at some speed)."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
        torch.use_deterministic_algorithms(True, warn_only=True)


def pin_memory(device: torch.device) -> bool:
    """Whether a DataLoader should hand out page-locked batches: only a CUDA copy gains from them."""
    return device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from pinned memory the copy overlaps the GPU's work (non-blocking).
    A no-op when it is there already (every CPU run)."""
    return tensor.to(device, non_blocking=device.type == "cuda")


def describe(device: torch.device) -> str:
    """A name for logs and reports: the GPU's model, else the CPU's."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    from .machine import cpu_name
    return f"{device} ({cpu_name()})" if device.type == "cpu" else str(device)
