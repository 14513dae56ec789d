"""Process groups for ``torchrun ... -m vitkit train``: NCCL between GPUs, gloo between CPUs.

The backend follows where the model is, not what the machine has: NCCL reduces CUDA tensors
only, so a CPU run on a GPU machine (``--device cpu``) still needs gloo. Each rank trains on
the GPU its ``LOCAL_RANK`` names (``vitkit.device.resolve_device``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA tensors, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: torch.device | str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        device = torch.device(device)
        dist.init_process_group(backend_for(device), device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def wrap_distributed(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The model as each rank's training step calls it: DDP, its gradients all-reduced in the backward pass."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
