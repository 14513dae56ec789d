"""DeiT's training augmentation on whole batches: random resized crop, RandAugment, Random Erasing.

timm applies these to one PIL image at a time in DataLoader workers; in-memory datasets here
have no workers, so they run on the uint8 batch after loading, grouped so that each operation
is one tensor call over the images that drew it. The distributions follow timm's (per-image
draws, the same magnitudes and ranges), and every draw comes from torch's global CPU RNG, so the
trainer's per-epoch ``torch.manual_seed`` replays an epoch exactly, and a batch on a GPU gets the
draws it would get on the CPU; only the pixels' work runs on the batch's device.

kornia supplies the operations where it is about as fast as a short tensor version: equalize,
contrast, solarize, invert (equalize is 10% faster on 28x28 batches, 25% slower on 224x224 ones).
Sharpness, posterize, colour, brightness and the affine warps are written here because kornia's
are 1.3-7x slower on one CPU thread, and autocontrast because kornia's is 1.5x slower and zeroes
flat channels where PIL leaves them alone (``benchmarks/bench_augment.py`` measures each choice).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from kornia import enhance

from .transforms import normalize, random_crop_flip

Tensor = torch.Tensor

INTERPOLATION = "bicubic"
"""DeiT's, for the resized crop and RandAugment's rotate/shear/translate."""
CROP_RATIO = (3 / 4, 4 / 3)
ERASE_SCALE, ERASE_RATIO = (0.02, 1 / 3), (0.3, 1 / 0.3)
ERASE_MODES = ("pixel", "const")
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class BatchAugment:
    """uint8 [B,C,H,W] -> float32 normalised [B,C,H,W], with DeiT's random ops in DeiT's order:
    crop (padded or resized) and flip, RandAugment on [0,1] pixels, normalisation, then Random
    Erasing, so that erased areas are N(0,1) noise (or zeros) in the model's input scale.

    With every op off it is exactly ``normalize`` and with only crop/flip it is
    ``normalize(random_crop_flip(...))``, so adding it to a trainer changes nothing by default.
    The input batch is never modified.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, crop_padding: int = 0, hflip: bool = False,
                 resized_crop_scale: tuple[float, float] | None = None, randaugment: str | None = None,
                 reprob: float = 0.0, remode: str = "pixel"):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if resized_crop_scale is not None and not 0 < resized_crop_scale[0] <= resized_crop_scale[1] <= 1:
            raise ValueError(f"resized_crop_scale must be (low, high), 0 < low <= high <= 1, got {resized_crop_scale}")
        if not 0 <= reprob <= 1:
            raise ValueError(f"reprob must be in [0, 1], got {reprob}")
        if remode not in ERASE_MODES:
            raise ValueError(f"remode must be one of {', '.join(ERASE_MODES)}, got {remode!r}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        self.resized_crop_scale = tuple(resized_crop_scale) if resized_crop_scale is not None else None
        self.randaugment = RandAugment.from_spec(randaugment) if randaugment else None
        self.reprob, self.remode = float(reprob), remode
        std = torch.tensor(self.std).view(-1, 1, 1)
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._scale, self._shift = 1 / std, -self._mean / std

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.resized_crop_scale or self.randaugment or self.reprob)

    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != len(self.mean):
            raise ValueError(f"expected uint8 [B,{len(self.mean)},H,W], got {images.dtype} {tuple(images.shape)}")
        x = random_crop_flip(images, self.crop_padding, self.hflip)
        if self.resized_crop_scale or self.randaugment:
            x = x.float().div_(255)
            if self.resized_crop_scale:
                x = random_resized_crop(x, self.resized_crop_scale)
            if self.randaugment:
                x = self.randaugment(x, fill=self._mean.to(x.device))
            x = x.mul_(self._scale.to(x.device)).add_(self._shift.to(x.device))  # in place: faster than a fused op into a new batch
        else:
            x = normalize(x, self.mean, self.std)  # one fused pass from uint8
        return random_erasing(x, self.reprob, self.remode) if self.reprob else x

    def __repr__(self) -> str:
        ops = {"crop_padding": self.crop_padding, "hflip": self.hflip, "resized_crop_scale": self.resized_crop_scale,
               "randaugment": self.randaugment, "reprob": self.reprob}
        on = ", ".join(f"{k}={v}" for k, v in ops.items() if v)
        return f"BatchAugment({on or 'off'}{f', remode={self.remode!r}' if self.reprob else ''})"


# ---------------------------------------------------------------- crops and erasing

def random_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], *,
                 whole: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's and timm's rejection sampling of a box per image, for all images at once:
    10 draws of (area fraction in ``scale``, log-uniform aspect in ``ratio``), the first that
    fits wins. ``whole``: a box may span the whole side (the crop may; an erased area may not).

    Returns top, left, height, width (int64 [n]) and ``found`` (bool [n], False where none fit).
    """
    area = torch.empty(n, 10).uniform_(scale[0], scale[1]).mul_(height * width)
    aspect = torch.empty(n, 10).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp_()
    bw = (area * aspect).sqrt_().round_().long()
    bh = (area / aspect).sqrt_().round_().long()
    slack = 0 if whole else 1
    fits = (bw > 0) & (bw <= width - slack) & (bh > 0) & (bh <= height - slack)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)
    bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)
    top = torch.rand(n).mul_(height - bh + 1).long()
    left = torch.rand(n).mul_(width - bw + 1).long()
    return top, left, bh, bw, fits.any(1)


def random_resized_crop(x: Tensor, scale: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO) -> Tensor:
    """torchvision's RandomResizedCrop back to the input size, every image its own box, as one
    bicubic ``grid_sample``; where no box fits, its fallback (the centre, aspect clamped into
    ``ratio``: the whole image for a square one)."""
    b, _, h, w = x.shape
    top, left, bh, bw, found = random_boxes(b, h, w, scale, ratio, whole=True)
    r = min(max(w / h, ratio[0]), ratio[1])
    fh, fw = min(h, round(w / r)), min(w, round(h * r))
    bh, bw = torch.where(found, bh, fh), torch.where(found, bw, fw)
    top, left = torch.where(found, top, (h - fh) // 2), torch.where(found, left, (w - fw) // 2)
    return _affine(x, None, bw / w, 0, (2 * left + bw) / w - 1, 0, bh / h, (2 * top + bh) / h - 1)


def random_erasing(x: Tensor, prob: float, mode: str = "pixel", scale: tuple[float, float] = ERASE_SCALE,
                   ratio: tuple[float, float] = ERASE_RATIO) -> Tensor:
    """timm's RandomErasing (one box, 10 tries) on a normalised batch, in place: each image with
    probability ``prob`` gets a box of ``scale`` of its area filled with N(0,1) noise per pixel
    and channel ("pixel") or zeros ("const", the mean colour after normalisation).

    A loop over the erased images (a quarter of a DeiT batch), as timm's: writing each box by
    slicing touches only its pixels, 1.2x (28x28) to 9x (224x224) faster than a batch-wide mask.
    """
    if mode not in ERASE_MODES:
        raise ValueError(f"mode must be one of {', '.join(ERASE_MODES)}, got {mode!r}")
    b, c, h, w = x.shape
    top, left, bh, bw, found = random_boxes(b, h, w, scale, ratio, whole=False)
    erase = (torch.rand(b) < prob) & found
    for i, t, l, eh, ew in zip(*(v[erase].tolist() for v in (torch.arange(b), top, left, bh, bw))):
        x[i, :, t:t + eh, l:l + ew] = torch.randn(c, eh, ew, dtype=x.dtype).to(x.device) if mode == "pixel" else 0.0
    return x


def _affine(x: Tensor, fill: Tensor | float | None, *coeffs: Tensor | float) -> Tensor:
    """Warp each image by its own affine map from output to input, PIL's convention, given as 6
    row-major coefficients (floats or [B] tensors) in normalised coordinates (-1..1 edge to edge).

    ``fill`` ([C,1,1] or a float) colours what comes from outside the image, as PIL's fillcolor:
    shifting by it lets ``grid_sample``'s zero padding do the filling. ``None`` clamps to the
    border instead, for crops that stay inside the image.
    """
    b = len(x)
    theta = torch.stack([torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(b) for c in coeffs], 1)
    theta = theta.view(b, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if fill is None:
        out = F.grid_sample(x, grid, mode=INTERPOLATION, padding_mode="border", align_corners=False)
    else:
        out = F.grid_sample(x - fill, grid, mode=INTERPOLATION, padding_mode="zeros", align_corners=False).add_(fill)
    return out.clamp_(0, 1)  # bicubic overshoots


# ---------------------------------------------------------------- RandAugment

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
"""timm's ``_RAND_TRANSFORMS``, in its order."""
RAND_INCREASING_OPS = tuple(op + "Increasing" if op in ("Posterize", "Solarize", "Color", "Contrast", "Brightness",
                                                        "Sharpness") else op for op in RAND_OPS)
"""timm's ``_RAND_INCREASING_TRANSFORMS`` (spec ``-inc1``, DeiT's): strength grows with the magnitude."""


@dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment on a float [0,1] batch: every image draws ``num_ops`` operations with
    replacement, each applied with probability ``prob`` at a magnitude drawn from
    N(``magnitude``, ``magnitude_std``) clipped to [0, ``magnitude_max``] (timm's 0-10 scale;
    ``magnitude_std`` inf: uniform in [0, magnitude]), with a random sign for the signed ops.

    One- and three-channel images both work: every op acts per channel except Color, which
    blends with the luma and is therefore the identity on gray images, as PIL's on mode "L".
    """

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = False

    @classmethod
    def from_spec(cls, spec: str) -> RandAugment:
        """Parse timm's config string, e.g. "rand-m9-n2-mstd0.5" or DeiT's "rand-m9-mstd0.5-inc1"
        (m magnitude, n ops, mstd magnitude noise (> 100: uniform), mmax its cap, p op probability,
        inc increasing ops); timm's defaults: m10 n2 mstd0 mmax10 p0.5."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand-', got {spec!r}")
        keys = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
                "mmax": ("magnitude_max", float), "p": ("prob", float), "inc": ("increasing", lambda v: bool(int(v)))}
        kwargs = {}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
            if not match or match[1] not in keys:
                raise ValueError(f"unknown RandAugment spec part {part!r} in {spec!r}: use m, n, mstd, mmax, p or inc "
                                 "followed by a number")
            key, value = match.groups()
            name, convert = keys[key]
            kwargs[name] = convert(value)
        if kwargs.get("magnitude_std", 0) > 100:
            kwargs["magnitude_std"] = math.inf
        ra = cls(**kwargs)
        if ra.num_ops < 1 or not 0 <= ra.prob <= 1 or ra.magnitude < 0 or ra.magnitude_std < 0:
            raise ValueError(f"RandAugment spec {spec!r} out of range: n >= 1, 0 <= p <= 1, m and mstd >= 0")
        return ra

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS

    def __call__(self, x: Tensor, fill: Tensor | float = 0.5) -> Tensor:
        """Augment ``x`` in place (and return it); ``fill`` ([C,1,1] or a float) is the colour
        warps bring in from outside, the dataset mean in timm's DeiT recipe."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"RandAugment needs [B,1,H,W] or [B,3,H,W] images, got {tuple(x.shape)}")
        b, names = len(x), self.ops
        for _ in range(self.num_ops):
            choice = torch.randint(len(names), (b,))
            chosen = torch.rand(b) < self.prob
            level = self._levels(b) * torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
            for k, name in enumerate(names):
                idx = torch.nonzero(chosen & (choice == k)).squeeze(1)
                if len(idx):
                    idx_x = idx.to(x.device)
                    x[idx_x] = apply_op(name, x[idx_x], level[idx].to(x.device), fill)
        return x

    def _levels(self, b: int) -> Tensor:
        """Per-image magnitudes as fractions of timm's full scale 10."""
        if math.isinf(self.magnitude_std):
            m = torch.rand(b) * self.magnitude
        elif self.magnitude_std > 0:
            m = torch.randn(b) * self.magnitude_std + self.magnitude
        else:
            m = torch.full((b,), self.magnitude)
        return m.clamp_(0, self.magnitude_max) / 10


def apply_op(name: str, x: Tensor, level: Tensor, fill: Tensor | float = 0.5) -> Tensor:
    """One RandAugment operation on a float [0,1] batch, each image at its own ``level``
    (magnitude / 10, signed: unsigned ops use its absolute value), with timm's level-to-argument
    mappings: rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhance factor
    0.1..1.9 (increasing: 1 +- 0.9), posterize 0..4 bits, solarize threshold 256..0, add 0..110."""
    try:
        op = _OPS[name]
    except KeyError:
        raise ValueError(f"unknown RandAugment op {name!r}: use one of {', '.join(_OPS)}") from None
    return op(x, level, fill)


def _auto_contrast(x: Tensor) -> Tensor:
    """PIL's: stretch each channel to [0, 1], leaving flat channels alone."""
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    flat = hi <= lo
    return torch.where(flat, x, (x - lo) / torch.where(flat, 1.0, hi - lo))


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` of each 8-bit level (0 bits: black, as PIL), as a uint8 mask:
    4-6x faster than kornia's float shifts."""
    mask = (0xFF << (8 - bits.clamp(0, 8))).to(torch.uint8).view(-1, 1, 1, 1)
    return (x.mul(255).round_().to(torch.uint8) & mask).float().div_(255)


def _solarize_add(x: Tensor, add: Tensor) -> Tensor:
    """timm's solarize_add: brighten only the pixels below 128 (kornia's adds everywhere, then inverts)."""
    return torch.where(x < 128 / 255, (x + add.view(-1, 1, 1, 1)).clamp_(max=1), x)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's Brightness: blend with black, a scaling; 1.3-1.5x faster than kornia's
    ``adjust_brightness_accumulative``."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _color(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's Color: blend with the ITU-R 601 luma (the image itself when gray). 2x faster than
    kornia's ``adjust_saturation_with_gray_subtraction``, which is the same blend."""
    if x.shape[1] == 1:
        return x
    gray = (x * _LUMA.to(x.device)).sum(1, keepdim=True)
    return gray.lerp(x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's: blend with its SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, over 13), border pixels kept.
    The filter as shifted sums is 4-6x faster than kornia's grouped convolution on a CPU."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    inner = x[..., 1:-1, 1:-1]
    blur = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).add_(inner, alpha=4).div_(13)
    out = x.clone()
    out[..., 1:-1, 1:-1] = blur.lerp_(inner, factor.view(-1, 1, 1, 1))
    return out.clamp_(0, 1)


def _rotate(x: Tensor, degrees: Tensor, fill: Tensor | float) -> Tensor:
    """PIL's ``rotate``: counter-clockwise about the centre (aspect-corrected in normalised coordinates)."""
    h, w = x.shape[-2:]
    a = torch.deg2rad(degrees)
    return _affine(x, fill, a.cos(), -a.sin() * h / w, 0, a.sin() * w / h, a.cos(), 0)


def _enhance_factor(level: Tensor, increasing: bool) -> Tensor:
    """timm's ``_enhance_level_to_arg`` (0.1..1.9, unsigned) and its increasing variant (1 +- 0.9)."""
    return (1 + 0.9 * level).clamp_(min=0.1) if increasing else 0.1 + 1.8 * level.abs()


def _shear(x: Tensor, k: Tensor, fill: Tensor | float, axis: int) -> Tensor:
    """PIL's affine (1, k, 0, 0, 1, 0) as timm uses it: about the top-left corner, not the centre."""
    h, w = x.shape[-2:]
    if axis == 0:
        return _affine(x, fill, 1, k * h / w, k * h / w, 0, 1, 0)
    return _affine(x, fill, 1, 0, 0, k * w / h, 1, k * w / h)


def _translate(x: Tensor, fraction: Tensor, fill: Tensor | float, axis: int) -> Tensor:
    """Shift by ``fraction`` of the side (timm's TranslateXRel/YRel); normalised coordinates span 2."""
    return _affine(x, fill, 1, 0, 2 * fraction, 0, 1, 0) if axis == 0 else _affine(x, fill, 1, 0, 0, 0, 1, 2 * fraction)


def _plain_and_increasing(name: str, op: Callable[[Tensor, Tensor, bool], Tensor]) -> dict[str, Callable]:
    """An op and its ``Increasing`` twin, which differ only in how the level maps to the argument."""
    return {name: lambda x, v, fill: op(x, v, False), name + "Increasing": lambda x, v, fill: op(x, v, True)}


_OPS: dict[str, Callable[[Tensor, Tensor, Tensor | float], Tensor]] = {
    "AutoContrast": lambda x, v, fill: _auto_contrast(x),
    "Equalize": lambda x, v, fill: enhance.equalize(x),
    "Invert": lambda x, v, fill: enhance.invert(x),
    "Rotate": lambda x, v, fill: _rotate(x, 30 * v, fill),
    **_plain_and_increasing("Posterize", lambda x, v, inc: _posterize(
        x, 4 - (4 * v.abs()).long() if inc else (4 * v.abs()).long())),
    **_plain_and_increasing("Solarize", lambda x, v, inc: enhance.solarize(
        x, ((256 - (256 * v.abs()).floor()) if inc else (256 * v.abs()).floor()) / 255)),
    "SolarizeAdd": lambda x, v, fill: _solarize_add(x, (110 * v.abs()).floor() / 255),
    **_plain_and_increasing("Color", lambda x, v, inc: _color(x, _enhance_factor(v, inc))),
    **_plain_and_increasing("Contrast", lambda x, v, inc: enhance.adjust_contrast_with_mean_subtraction(
        x, _enhance_factor(v, inc))),
    **_plain_and_increasing("Brightness", lambda x, v, inc: _brightness(x, _enhance_factor(v, inc))),
    **_plain_and_increasing("Sharpness", lambda x, v, inc: _sharpness(x, _enhance_factor(v, inc))),
    "ShearX": lambda x, v, fill: _shear(x, 0.3 * v, fill, 0),
    "ShearY": lambda x, v, fill: _shear(x, 0.3 * v, fill, 1),
    "TranslateXRel": lambda x, v, fill: _translate(x, 0.45 * v, fill, 0),
    "TranslateYRel": lambda x, v, fill: _translate(x, 0.45 * v, fill, 1),
}
