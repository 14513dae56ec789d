"""Optimiser with the usual ViT parameter groups, and the cosine schedule with linear warmup."""
from __future__ import annotations

import math

import torch
from torch import nn


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and head."""
    if name.startswith(("cls_token", "dist_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """No weight decay on norms, biases and position/class tokens (1-D tensors and named tokens);
    with ``layer_decay``, block i's learning rate is scaled by layer_decay^(depth + 1 - (i + 1)).

    Decaying LayerNorm gains or the position embeddings only pulls them towards zero,
    which hurts ViTs (DeiT, timm). Layer-wise decay (BEiT, MAE) keeps fine-tuning from
    overwriting the general features of the early layers. Frozen parameters are left out.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", []))
    if layer_decay and not depth:
        raise ValueError(f"layer_decay needs a model with Transformer blocks; {type(model).__name__} has none "
                         "(leave layer_decay unset)")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name in skip or name.endswith(".gamma"))
        lid = layer_id(name, depth) if layer_decay else depth + 1
        group = groups.setdefault((lid, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - lid) if layer_decay else 1.0})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                     betas: tuple[float, float] = (0.9, 0.999), layer_decay: float | None = None
                     ) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, layer_decay)
    if name == "adamw":  # fused: one kernel over all parameters (CPU and CUDA), same update
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r} (adamw, sgd)")


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup to ``peak``, then half a cosine down to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
