"""Speed of the DeiT batch augmentation (BatchAugment, Mixup) on one CPU thread, and of the
alternatives each implementation choice was made against.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_augment.py   # about a minute; writes results/augment.json

Two batches: 256x1x28x28 (Fashion-MNIST's training batch) and 32x3x224x224 (ImageNet-sized).
"choices" times each operation on the whole batch both ways: where vitkit calls kornia, against
a short hand-written tensor version; where it uses its own code, against kornia's function
(or kornia's own augmentation module, for the composite ones). Every figure is the median of
several calls after a warm-up, and the two sides of a choice are called in turn, so that a
burst of load from other work on the machine hits both alike.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import kornia
import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia import enhance
from kornia.augmentation.auto import RandAugment as KorniaRandAugment
from kornia.geometry.transform import warp_affine

from vitkit.data import BatchAugment, Mixup
from vitkit.data.augment import (RandAugment, _auto_contrast, _brightness, _color, _posterize, _sharpness,
                                 random_erasing, random_resized_crop)

RESULTS = Path(__file__).parent / "results" / "augment.json"
SHAPES = {"256x1x28x28": (256, 1, 28, 28), "32x3x224x224": (32, 3, 224, 224)}
SPEC = "rand-m9-n2-mstd0.5"
CONFIGS = {  # name -> BatchAugment options, each adding to the one before
    "normalize only": {},
    "crop+flip": dict(crop_padding=4, hflip=True),
    "resized crop+flip": dict(resized_crop_scale=(0.08, 1.0), hflip=True),
    "+RandAugment": dict(resized_crop_scale=(0.08, 1.0), hflip=True, randaugment=SPEC),
    "+erasing (DeiT)": dict(resized_crop_scale=(0.08, 1.0), hflip=True, randaugment=SPEC, reprob=0.25),
}


def median_ms(*fns: Callable[[], object], budget_s: float = 2.0, max_reps: int = 25) -> list[float]:
    """Median wall time of each of ``fns`` in ms, after a warm-up call: called in turn (one of
    each, then again) within ``budget_s``, so that a burst of load hits them all alike."""
    t = time.perf_counter()
    for fn in fns:
        fn()
    first = time.perf_counter() - t
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(int(max(3, min(max_reps, budget_s / max(first, 1e-6))))):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [round(statistics.median(ts) * 1000, 3) for ts in times]


def figure(ms: float, batch: int) -> dict[str, float]:
    return {"ms": ms, "images_per_s": round(batch / ms * 1000, 1)}


def pipelines(images: torch.Tensor) -> dict[str, dict[str, float]]:
    c, b = images.shape[1], len(images)
    augs = {name: BatchAugment((0.5,) * c, (0.25,) * c, **cfg) for name, cfg in CONFIGS.items()}
    out = {name: figure(median_ms(lambda aug=aug: aug(images))[0], b) for name, aug in augs.items()}
    x, labels = augs["normalize only"](images), torch.randint(0, 10, (b,))
    for name, switch in (("Mixup", 0.0), ("CutMix", 1.0)):
        mix = Mixup(switch_prob=switch, num_classes=10)
        out[name] = figure(median_ms(lambda mix=mix: mix(x, labels))[0], b)
    return out


# ---------------------------------------------------------------- the alternatives

def hand_equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's equalize with one bincount over all planes (what kornia's batched version does with scatter_add)."""
    b, c, h, w = x.shape
    q = x.mul(255).long().view(b * c, h * w)
    hist = torch.bincount((q + torch.arange(b * c).view(-1, 1) * 256).view(-1), minlength=b * c * 256).view(b * c, 256)
    last = hist.gather(1, (255 - hist.flip(1).ne(0).to(torch.uint8).argmax(1)).view(-1, 1))
    step = (h * w - last) // 255
    lut = ((hist.cumsum(1) + step // 2) // step.clamp(min=1)).roll(1, 1)
    lut[:, 0] = 0
    out = lut.clamp_(0, 255).gather(1, q).float().div_(255)
    return torch.where(step == 0, x.view(b * c, -1), out).view(b, c, h, w)


def hand_gray(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(1, keepdim=True)


def warp_pair(x: torch.Tensor) -> tuple[Callable, Callable]:
    """The same shear + fill done as vitkit does (affine_grid + grid_sample, bilinear for a like-for-like
    comparison) and through kornia's warp_affine, which takes a pixel matrix and a fill."""
    b, c, h, w = x.shape
    k = torch.rand(b) * 0.3
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 1] = theta[:, 0, 2] = k
    fill = torch.full((c, 1, 1), 0.5)
    pixel = torch.zeros(b, 2, 3)
    pixel[:, 0, 0] = pixel[:, 1, 1] = 1
    pixel[:, 0, 1] = -k

    def ours():
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x - fill, grid, mode="bilinear", align_corners=False).add_(fill)

    def theirs():
        return warp_affine(x, pixel, (h, w), mode="bilinear", padding_mode="fill", fill_value=fill.view(-1))
    return ours, theirs


def choices(images: torch.Tensor) -> dict[str, dict]:
    b, c = images.shape[:2]
    x = images.float() / 255
    f = torch.rand(b) * 1.8 + 0.1
    bits = torch.randint(0, 5, (b,))
    thresh = torch.rand(b)
    ours_warp, kornia_warp = warp_pair(x)
    rgb = x.expand(-1, 3, -1, -1)  # kornia's RandAugment needs RGB (its Color is HSV saturation)
    rows = {  # op -> (what vitkit uses, its code, the alternative, its code)
        "equalize": ("kornia", lambda: enhance.equalize(x), "hand (bincount)", lambda: hand_equalize(x)),
        "brightness": ("hand", lambda: _brightness(x, f),
                       "kornia", lambda: enhance.adjust_brightness_accumulative(x, f)),
        "contrast": ("kornia", lambda: enhance.adjust_contrast_with_mean_subtraction(x, f), "hand",
                     lambda: hand_gray(x).mean((1, 2, 3), keepdim=True).lerp(x, f.view(-1, 1, 1, 1)).clamp_(0, 1)),
        "solarize": ("kornia", lambda: enhance.solarize(x, thresh),
                     "hand", lambda: torch.where(x < thresh.view(-1, 1, 1, 1), x, 1 - x)),
        "invert": ("kornia", lambda: enhance.invert(x), "hand", lambda: 1 - x),
        "sharpness": ("hand (shifted sums)", lambda: _sharpness(x, f), "kornia", lambda: enhance.sharpness(x, f)),
        "posterize": ("hand (uint8 mask)", lambda: _posterize(x, bits), "kornia", lambda: enhance.posterize(x, bits)),
        "autocontrast": ("hand", lambda: _auto_contrast(x), "kornia normalize_min_max",
                         lambda: enhance.normalize_min_max(x)),
        "affine warp with fill (bilinear)": ("hand (affine_grid + grid_sample)", ours_warp, "kornia warp_affine",
                                             kornia_warp),
        "resized crop (bicubic)": ("vitkit", lambda: random_resized_crop(x, (0.08, 1.0)), "kornia RandomResizedCrop",
                                   lambda: K.RandomResizedCrop(x.shape[-2:], resample="bicubic")(x)),
        "RandAugment n2 m9": ("vitkit (per image, timm)", lambda: RandAugment.from_spec(SPEC)(x.clone()),
                              "kornia RandAugment (per batch" + (", on RGB)" if c == 1 else ")"),
                              lambda: KorniaRandAugment(n=2, m=9)(rgb)[:, :c]),
        "random erasing p=0.25": ("vitkit (pixel noise; loop over erased)", lambda: random_erasing(x.clone(), 0.25),
                                  "kornia RandomErasing (constant)", lambda: K.RandomErasing(p=0.25)(x)),
    }
    if c == 3:
        rows["color"] = ("hand", lambda: _color(x, f),
                         "kornia", lambda: enhance.adjust_saturation_with_gray_subtraction(x, f))
    out = {}
    for op, (ours_name, ours, alt_name, alt) in rows.items():
        ours_ms, alt_ms = median_ms(ours, alt, budget_s=1.0, max_reps=9)
        out[op] = {"vitkit": ours_name, "vitkit_ms": ours_ms, "alternative": alt_name, "alternative_ms": alt_ms}
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = {"torch": torch.__version__, "kornia": kornia.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "randaugment": SPEC, "batches": {}}
    for name, shape in SHAPES.items():
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        result["batches"][name] = {"pipelines": pipelines(images), "choices": choices(images)}
        for row, fig in result["batches"][name]["pipelines"].items():
            print(f"{name:>13} {row:<20} {fig['ms']:9.2f} ms  {fig['images_per_s']:10.0f} img/s")
        for op, r in result["batches"][name]["choices"].items():
            print(f"{name:>13}   {op:<34} {r['vitkit']:<38} {r['vitkit_ms']:8.2f} ms   vs {r['alternative']:<40}"
                  f" {r['alternative_ms']:8.2f} ms")
    result["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['seconds']} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
