"""Losses of a training step: cross-entropy on hard or mixed labels, and DeiT's distillation through attention.

DeiT (Touvron et al., 2021) adds a distillation token whose head learns from a teacher
while the [class] token's head learns from the labels:

    loss = (1 - alpha) * CE(head(cls), y) + alpha * L_teacher(head_dist(dist), teacher(x))

with L_teacher either *hard* (cross-entropy with the teacher's argmax, DeiT's best) or
*soft* (KL divergence at temperature tau, scaled by tau^2 as in Hinton et al., 2015;
DeiT's code further divides by the number of classes, which only rescales alpha).
The teacher sees exactly the student's (augmented, mixed) input, as in DeiT, unless its
outputs are cached: ``distill_cache`` runs the teacher once over the unaugmented training
images (and their mirror images) before training, which makes distillation nearly free when
the teacher costs more than the student's step and the augmentation is light (a pixel's
crop, flips), as with a ViT teacher for a ViT student trained on a share of its patches.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DistillMode = Literal["hard", "soft"]


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with integer labels (smoothed), or with soft targets [B, K] (Mixup/CutMix: already smoothed)."""
    if targets.dtype.is_floating_point:
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mode: DistillMode, tau: float = 1.0
                      ) -> torch.Tensor:
    """The distillation head's loss against the teacher's logits (no gradient flows to the teacher)."""
    teacher = teacher.detach().float()
    student = student.float()
    if mode == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    if mode == "soft":
        return F.kl_div(F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1),
                        reduction="batchmean", log_target=True) * tau * tau
    raise ValueError(f"distillation mode must be 'hard' or 'soft', got {mode!r}")


class Teacher(nn.Module):
    """A frozen classifier that takes the student's normalised input, renormalised and resized to its own."""

    def __init__(self, model: nn.Module, student_stats: tuple[Sequence[float], Sequence[float]],
                 teacher_stats: tuple[Sequence[float], Sequence[float]], img_size: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        (sm, ss), (tm, ts) = student_stats, teacher_stats
        view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std, as one scale and shift
        self.register_buffer("scale", view(ss) / view(ts), persistent=False)
        self.register_buffer("shift", (view(sm) - view(tm)) / view(ts), persistent=False)
        self.img_size = img_size

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # BatchNorm statistics and dropout stay in inference mode

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        return self.model(x)


class TrainingLoss(nn.Module):
    """The loss of one step from the model's output, the (possibly mixed) targets and the teacher's logits.

    Without a teacher the output is one logits tensor. With one it is the distilled model's
    pair (class head, distillation head); a model with a single head is taught by blending
    both losses on that head (classic knowledge distillation). The caller supplies the
    teacher's logits, computed on the batch or looked up from a cache (``Trainer``).
    """

    def __init__(self, label_smoothing: float = 0.0, mode: DistillMode = "hard", alpha: float = 0.5,
                 tau: float = 1.0):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.label_smoothing, self.mode, self.alpha, self.tau = label_smoothing, mode, alpha, tau

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logits is None:
            return classification_loss(output, targets, self.label_smoothing)
        cls_out, dist_out = output if isinstance(output, tuple) else (output, output)
        base = classification_loss(cls_out, targets, self.label_smoothing)
        distill = distillation_loss(dist_out, teacher_logits, self.mode, self.tau)
        return (1 - self.alpha) * base + self.alpha * distill
