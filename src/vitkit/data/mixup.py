"""Mixup and CutMix with soft targets, as timm's ``Mixup`` in its 'batch' mode (DeiT's recipe).

One mixing weight per batch and the batch's mirror image as partner (``x.flip(0)``): that is
a single tensor op instead of per-sample boxes, and it is what DeiT trained with. Draws come
from torch's global RNG, so the trainer's per-epoch seed replays them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Mixup:
    """``mixup(x, labels) -> (x_mixed, soft targets float32 [B, num_classes])``.

    With probability ``prob`` the batch is mixed: CutMix with probability ``switch_prob`` (when
    both alphas are > 0), else Mixup, with lam ~ Beta(alpha, alpha). CutMix's lam is then
    corrected to the area its clipped box really pasted, so targets match pixels. Targets are
    label-smoothed one-hots (timm's convention: off = smoothing / K, on = 1 - smoothing + off),
    mixed with the same lam; unmixed batches still get smoothed targets.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, *, num_classes: int):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        if not (0 <= prob <= 1 and 0 <= switch_prob <= 1 and 0 <= label_smoothing < 1):
            raise ValueError(f"prob and switch_prob must be in [0, 1] and label_smoothing in [0, 1), got {prob}, "
                             f"{switch_prob}, {label_smoothing}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing, self.num_classes = float(label_smoothing), int(num_classes)

    @property
    def enabled(self) -> bool:
        """Whether any batch can be mixed (targets are smoothed either way)."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        lam, cutmix = self._draw()
        if cutmix:
            x, lam = _cutmix(x, lam)
        elif lam < 1:
            x = x.flip(0).lerp_(x, lam)  # into the flipped copy: one new batch, not two
        return x, self._targets(labels, lam)

    def _draw(self) -> tuple[float, bool]:
        """timm's ``_params_per_batch``: (lam, use CutMix); lam 1 means no mixing."""
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = float(torch.rand(())) < self.switch_prob
        else:
            cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        return float(torch.distributions.Beta(alpha, alpha).sample()), cutmix

    def _targets(self, labels: Tensor, lam: float) -> Tensor:
        off = self.label_smoothing / self.num_classes
        y = F.one_hot(labels, self.num_classes).float().mul_(1 - self.label_smoothing).add_(off)
        return y if lam == 1 else y.flip(0).lerp_(y, lam)

    def __repr__(self) -> str:
        return (f"Mixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes})")


def _cutmix(x: Tensor, lam: float) -> tuple[Tensor, float]:
    """Paste the partner's box of area about (1 - lam), centred anywhere and clipped at the
    edges (timm's ``rand_bbox``), and return lam corrected to the pasted area (``correct_lam``)."""
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1].flip(0)
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)
