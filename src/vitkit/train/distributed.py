"""Process groups for ``torchrun ... -m vitkit train``: NCCL between GPUs, gloo between CPUs.

The backend follows where the model is, not what the machine has: NCCL reduces CUDA tensors
only, so a CPU run on a GPU machine (``--device cpu``) still needs gloo. Each rank trains on
the GPU its ``LOCAL_RANK`` names (``vitkit.device.resolve_device``).

Two ways to spread the model: DDP keeps a whole copy on every rank and all-reduces the
gradients; FSDP (``fsdp: true``, PyTorch's ``fully_shard``) keeps 1/world of every weight,
gradient and optimiser moment on each rank and gathers a block's weights only while it runs,
with activation checkpointing (a block's activations recomputed in the backward pass), for
models that do not fit one device. Checkpoints are gathered into full state dicts either way,
so one process loads them as it loads any run.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

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
    """The model as each rank's training step calls it: DDP, its gradients all-reduced in the backward
    pass; an FSDP-sharded model (:func:`shard_model`) is its own wrapper."""
    if not info.enabled or is_sharded(model):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


BLOCK = re.compile(r"(^|\.)blocks\.\d+$")  # a transformer block: vitkit's models keep them in `blocks` lists


def shard_model(model: nn.Module, device: torch.device, checkpoint_blocks: bool = True) -> nn.Module:
    """``model`` sharded over all ranks in place (FSDP2): each transformer block is one unit whose
    weights are gathered just before it runs and freed after, the rest (embeddings, head) is the
    root's unit. ``checkpoint_blocks`` recomputes each block's activations in the backward pass
    instead of keeping them: ~1/3 more compute for activations of one block instead of all.
    Create the optimiser after this: the parameters are replaced by sharded ones."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = [m for name, m in model.named_modules() if BLOCK.search(name)]
    for block in blocks:
        if checkpoint_blocks:
            checkpoint(block)
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole model's and optimiser's state dicts, gathered to the CPU as one process would hold them
    (a collective: every rank calls it; all get the full dicts)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_options())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
