"""Image transforms: per-image PIL resizing for folders, and whole-batch tensor operations.

Augmentation works on uint8 batches after loading, so datasets stay deterministic (and can
be decoded once, up front) while every epoch still sees fresh crops and flips.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import VitkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class EvalResize:
    """How an image becomes the model's square input at evaluation, in timm's terms (its eval transform).

    ``center``: the shorter side to ``floor(size / crop_pct)``, then the central ``size`` square;
    ``squash``: both sides to ``floor(size / crop_pct)`` (aspect ratio lost), then the central
    square (Hugging Face's ViT and DeiT processors). Pretrained weights state theirs (timm's
    ``pretrained_cfg``, HF's ``preprocessor_config.json``) and score best with it; vitkit's own
    runs use the default, the whole shorter side. The crop is resampled straight from the source
    box it covers, which is the arithmetic of resizing the whole image and then cropping, without
    ever holding the resized whole: a 100000x1 strip costs a ``size``-square of memory.
    """
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) \
                or not 0 < self.crop_pct <= 1:
            raise VitkitError(f"crop_pct must be a fraction in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise VitkitError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise VitkitError(f"crop_mode {self.crop_mode!r} is not one of {', '.join(CROP_MODES)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EvalResize:
        """The transform a checkpoint's config (or ``model.checkpoint_meta``) asks for; the default without."""
        return cls(**{k: config[k] for k in ("crop_pct", "interpolation", "crop_mode") if config.get(k) is not None})

    def scale_size(self, size: int) -> int:
        """The side the image is resized to before the crop (timm: ``floor(img_size / crop_pct)``)."""
        return math.floor(size / self.crop_pct + 1e-6)  # a crop_pct of 224 / 248 gives 248, not 247.99999

    def __call__(self, im: Image.Image, size: int) -> Image.Image:
        w, h = im.size
        scale = self.scale_size(size)
        if self.crop_mode == "squash":
            new_w = new_h = scale
        elif w <= h:  # torchvision's Resize(int): the shorter side to scale, the longer in proportion, truncated
            new_w, new_h = scale, int(scale * h / w)
        else:
            new_w, new_h = int(scale * w / h), scale
        if (w, h) == (new_w, new_h) == (size, size):
            return im
        left, top = round((new_w - size) / 2), round((new_h - size) / 2)  # torchvision's CenterCrop
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return im.resize((size, size), INTERPOLATIONS[self.interpolation], box=box, reducing_gap=3.0)


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the central ``size`` x ``size`` square (vitkit's eval transform,
    :class:`EvalResize` by default): no distortion of the aspect ratio, at the cost of the borders."""
    return EvalResize()(im, size)


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 [N,C,H,W] tensor (C 1 or 3) to ``size`` x ``size`` with :func:`resize_center_crop`,
    image by image: the built-in datasets at another size are then exactly what ``predict`` and
    ``serve`` make of the same picture as a file (torch's bicubic differed by ~3 grey levels on
    average, up to 33, upsampling digits). ~35 us an image at 56 px."""
    if x.shape[-2:] == (size, size):
        return x
    mode = {1: "L", 3: "RGB"}[x.shape[1]]
    arrays = x.permute(0, 2, 3, 1).numpy()
    out = np.stack([np.asarray(resize_center_crop(Image.fromarray(a[..., 0] if mode == "L" else a), size))
                    for a in arrays])
    return torch.from_numpy(out.reshape(len(x), size, size, -1)).permute(0, 3, 1, 2).contiguous()


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Gray -> RGB is a broadcast view (no memory); RGB -> gray uses ITU-R 601 luma as PIL does."""
    c = x.shape[-3]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], in_chans, *x.shape[-2:])
    if c == 3 and in_chans == 1:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(3, 1, 1)
        return (x.float() * w).sum(-3, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {c} channels to {in_chans}")


def match_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels: repeated from gray, averaged from RGB."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    return (sum(values) / len(values),) * in_chans


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32 ((x / 255) - mean) / std, in one fused multiply-add."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return torch.addcmul(-m / s, x.float(), 1.0 / (255.0 * s))


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None,
                     pad_mode: Literal["reflect", "zeros"] = "reflect") -> torch.Tensor:
    """Pad each image by ``padding``, crop a random window of the original size, and mirror
    half of the images horizontally; one random draw per sample, the same for its channels.
    The draws come from the CPU's generator whatever the device, so a seed gives the same crops
    on a GPU as on a CPU; only the [B, H*W] index moves to the images' device.

    Rather than padding the batch, each output pixel's source index is computed (with
    reflection folded in) and gathered in one call, so it works for any dtype and never
    loops over images.
    """
    b, c, h, w = x.shape
    if b == 0 or (padding <= 0 and not flip):
        return x
    p = max(int(padding), 0)
    dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator) - p
    dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator) - p
    cols = torch.arange(w).expand(b, w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    rows, row_ok = _source_index(torch.arange(h) + dy, h, pad_mode)
    cols, col_ok = _source_index(cols + dx, w, pad_mode)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).to(x.device).expand(b, c, h * w)
    out = torch.gather(x.reshape(b, c, h * w), 2, index).view(b, c, h, w)
    if pad_mode == "zeros":
        out = out * (row_ok[:, :, None] & col_ok[:, None, :]).view(b, 1, h, w).to(x.device, x.dtype)
    return out


def _source_index(i: torch.Tensor, n: int, pad_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map padded coordinates to source ones: mirror without repeating the edge (as
    ``F.pad(mode="reflect")``), or clamp and flag the out-of-range ones for zeroing."""
    inside = (i >= 0) & (i < n)
    if pad_mode == "zeros":
        return i.clamp(0, n - 1), inside
    if pad_mode != "reflect":
        raise ValueError(f"pad_mode must be 'reflect' or 'zeros', got {pad_mode!r}")
    if n == 1:
        return torch.zeros_like(i), inside
    period = 2 * (n - 1)
    i = i.abs() % period
    return torch.where(i >= n, period - i, i), inside
