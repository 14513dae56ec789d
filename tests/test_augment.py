"""DeiT's batch augmentation: resized crop, RandAugment (against PIL, timm's backend), Random
Erasing, Mixup/CutMix soft targets, and repeated augmentation in the sampler."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from vitkit.data import (BatchAugment, InMemoryDataset, Mixup, RandAugment, ShardSampler, make_loader, normalize,
                         random_crop_flip)
from vitkit.data.augment import RAND_INCREASING_OPS, RAND_OPS, apply_op, random_boxes, random_resized_crop

ALL_OPS = sorted(set(RAND_OPS + RAND_INCREASING_OPS))
FULL = dict(crop_padding=2, hflip=True, resized_crop_scale=(0.08, 1.0), randaugment="rand-m9-n2-mstd0.5",
            reprob=0.25)


def _images(b=32, c=3, size=28, seed=0):
    """Smooth random images (upsampled noise), so that warps and filters have something to move."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, c, 5, 5, generator=g) * 255
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).round().to(torch.uint8)


def _stats(c):
    return (0.5,) * c, (0.25,) * c


def _unnormalize(y, c):
    mean, std = _stats(c)
    return y * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


# ---------------------------------------------------------------- BatchAugment

@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("config", [dict(crop_padding=3), dict(hflip=True), dict(resized_crop_scale=(0.08, 1.0)),
                                    dict(randaugment="rand-m9-n2-mstd0.5"), dict(randaugment="rand-m9-mstd0.5-inc1"),
                                    {k: v for k, v in FULL.items() if k != "reprob"}])
def test_batch_augment_keeps_shape_dtype_range(c, config):
    x = _images(c=c)
    aug = BatchAugment(*_stats(c), **config)
    y = aug(x)
    assert aug.enabled and y.shape == x.shape and y.dtype == torch.float32
    pixels = _unnormalize(y, c)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert not torch.allclose(y, normalize(x, *_stats(c)))
    assert torch.equal(x, _images(c=c)), "the input batch is left alone"


def test_batch_augment_off_and_crop_flip_are_the_plain_paths():
    x, stats = _images(c=1), _stats(1)
    off = BatchAugment(*stats)
    assert not off.enabled and torch.equal(off(x), normalize(x, *stats))
    torch.manual_seed(5)
    y = BatchAugment(*stats, crop_padding=2, hflip=True)(x)
    torch.manual_seed(5)
    assert torch.equal(y, normalize(random_crop_flip(x, 2, True), *stats))


@pytest.mark.parametrize("c", [1, 3])
def test_batch_augment_reproducible_under_seed(c):
    x, aug = _images(c=c), BatchAugment(*_stats(c), **FULL)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(8)
    other = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, other)


def test_batch_augment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="remode"):
        BatchAugment((0.5,), (0.5,), reprob=0.25, remode="rand")
    with pytest.raises(ValueError, match="resized_crop_scale"):
        BatchAugment((0.5,), (0.5,), resized_crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"uint8 \[B,3,H,W\]"):
        BatchAugment(*_stats(3), hflip=True)(_images(c=1))


# ---------------------------------------------------------------- random resized crop

def test_random_boxes_follow_scale_and_ratio():
    h = w = 64
    top, left, bh, bw, found = random_boxes(4000, h, w, (0.08, 1.0), (3 / 4, 4 / 3), whole=True)
    assert found.float().mean() > 0.9
    top, left, bh, bw = top[found], left[found], bh[found], bw[found]
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = (bh * bw).float() / (h * w)
    assert area.min() > 0.08 * 0.85 and area.max() <= 1 and area.min() < 0.12 and area.max() > 0.9
    aspect = bw.float() / bh.float()
    assert aspect.min() > 0.75 * 0.9 and aspect.max() < 4 / 3 / 0.9
    assert top.float().std() > 3 and left.float().std() > 3  # positions vary


def test_random_resized_crop_is_crop_then_resize():
    x = _images(8, 2, 32).float() / 255
    torch.manual_seed(3)
    top, left, bh, bw, found = random_boxes(8, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), whole=True)
    torch.manual_seed(3)
    y = random_resized_crop(x, (0.08, 1.0))
    assert found.all() and y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    for i in range(8):
        t, l, h, w = int(top[i]), int(left[i]), int(bh[i]), int(bw[i])
        ref = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w], size=(32, 32), mode="bicubic", align_corners=False)
        # crop-then-resize clamps at the crop's edge where the warp reads the true neighbours, which
        # reach 2 source pixels (up to 7 output pixels at 3.5x) in: compare inside that
        assert torch.allclose(y[i, :, 8:-8, 8:-8], ref[0, :, 8:-8, 8:-8].clamp(0, 1), atol=1e-4), i


# ---------------------------------------------------------------- RandAugment

@pytest.mark.parametrize("spec, expected", [
    ("rand-m9-n2-mstd0.5", RandAugment(9.0, 2, 0.5)),
    ("rand-m9-mstd0.5-inc1", RandAugment(9.0, 2, 0.5, increasing=True)),
    ("rand-m7-n3-mmax12-p0.3", RandAugment(7.0, 3, magnitude_max=12.0, prob=0.3)),
    ("rand-m5-mstd101", RandAugment(5.0, magnitude_std=math.inf)),
])
def test_randaugment_spec(spec, expected):
    assert RandAugment.from_spec(spec) == expected


@pytest.mark.parametrize("spec", ["augmix-m5", "rand-x3", "rand-m", "rand-n0", "rand-m9-w0"])
def test_randaugment_bad_spec(spec):
    with pytest.raises(ValueError):
        RandAugment.from_spec(spec)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_keeps_shape_and_range_and_changes_images(name, c):
    x = _images(16, c).float() / 255
    strength = 0.5 if name == "Solarize" else 0.9  # threshold 128, not 230: smooth images rarely reach 230
    level = torch.full((16,), strength) * torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)
    y = apply_op(name, x.clone(), level, torch.full((c, 1, 1), 0.5))
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 1
    changed = (y - x).abs().amax((1, 2, 3)) > 1.5 / 255
    if name.startswith("Color") and c == 1:
        assert not changed.any()  # saturation is the identity on gray, as PIL's on mode "L"
    else:
        assert changed.float().mean() > 0.9, changed


def _pil(x):
    a = x.permute(1, 2, 0).numpy()
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def _from_pil(im, c):
    a = torch.from_numpy(np.asarray(im).copy())
    return (a.unsqueeze(0) if c == 1 else a.permute(2, 0, 1)).float() / 255


def _solarize_add(im, add):  # timm's, a lookup table over PIL
    return im.point([min(255, i + add) if i < 128 else i for i in range(256)] * len(im.getbands()))


# op, level, the same through PIL (timm's backend), max |difference| in 8-bit levels
PIL_REFERENCE = [
    ("AutoContrast", 0.9, ImageOps.autocontrast, 1),
    ("Equalize", 0.9, ImageOps.equalize, 0),
    ("Invert", 0.9, ImageOps.invert, 0),
    ("Posterize", 0.9, lambda im: ImageOps.posterize(im, 3), 0),
    ("PosterizeIncreasing", 0.3, lambda im: ImageOps.posterize(im, 3), 0),
    ("Solarize", 0.5, lambda im: ImageOps.solarize(im, 128), 0),
    ("SolarizeIncreasing", 0.5, lambda im: ImageOps.solarize(im, 128), 0),
    ("SolarizeAdd", 0.9, lambda im: _solarize_add(im, 99), 0),
    ("Color", 0.9, lambda im: ImageEnhance.Color(im).enhance(1.72), 2),
    ("ColorIncreasing", -0.5, lambda im: ImageEnhance.Color(im).enhance(0.55), 2),
    ("Contrast", 0.3, lambda im: ImageEnhance.Contrast(im).enhance(0.64), 2),
    ("Brightness", 0.9, lambda im: ImageEnhance.Brightness(im).enhance(1.72), 1),
    ("Sharpness", 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.72), 2),
    ("SharpnessIncreasing", -0.9, lambda im: ImageEnhance.Sharpness(im).enhance(0.19), 2),
]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name, level, reference, tolerance", PIL_REFERENCE, ids=[r[0] for r in PIL_REFERENCE])
def test_pixel_ops_match_pil(name, level, reference, tolerance, c):
    x = torch.randint(0, 256, (4, c, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x[1] = x[1] // 3 + 60  # a low-contrast image, for AutoContrast and Equalize
    y = apply_op(name, x.float() / 255, torch.full((4,), level))
    ref = torch.stack([_from_pil(reference(_pil(im)), c) for im in x])
    assert (y - ref).abs().max() * 255 <= tolerance + 1e-3


# op, signed level, PIL's transform at that level (timm's: rotate 30 deg, shear 0.3, translate 0.45 of the side)
GEOMETRY = [
    ("Rotate", 0.5, lambda im, fill: im.rotate(15, resample=Image.Resampling.BICUBIC, fillcolor=fill)),
    ("ShearX", 0.5, lambda im, fill: im.transform(im.size, Image.Transform.AFFINE, (1, 0.15, 0, 0, 1, 0),
                                                  resample=Image.Resampling.BICUBIC, fillcolor=fill)),
    ("ShearY", -0.5, lambda im, fill: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, -0.15, 1, 0),
                                                   resample=Image.Resampling.BICUBIC, fillcolor=fill)),
    ("TranslateXRel", 0.5, lambda im, fill: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 7.2, 0, 1, 0),
                                                         resample=Image.Resampling.BICUBIC, fillcolor=fill)),
    ("TranslateYRel", -0.5, lambda im, fill: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -7.2),
                                                          resample=Image.Resampling.BICUBIC, fillcolor=fill)),
]


@pytest.mark.parametrize("name, level, reference", GEOMETRY, ids=[g[0] for g in GEOMETRY])
def test_geometric_ops_match_pil(name, level, reference):
    """Same direction, centre and fill as PIL; only the bicubic kernel differs (torch a=-0.75, PIL -0.5)."""
    x, fill = _images(4, 3, 32), (0.2, 0.4, 0.6)
    y = apply_op(name, x.float() / 255, torch.full((4,), level), torch.tensor(fill).view(3, 1, 1))
    mirrored = apply_op(name, x.float() / 255, torch.full((4,), -level), torch.tensor(fill).view(3, 1, 1))
    pil_fill = tuple(round(255 * f) for f in fill)
    ref = torch.stack([_from_pil(reference(_pil(im), pil_fill), 3) for im in x])
    assert (y - ref).abs().mean() < 0.01 < (mirrored - ref).abs().mean()


@pytest.mark.parametrize("c", [1, 3])
def test_randaugment_changes_images_reproducibly(c):
    x = _images(64, c).float() / 255
    ra = RandAugment.from_spec("rand-m9-n2-mstd0.5")
    torch.manual_seed(11)
    y = ra(x.clone(), fill=0.5)
    torch.manual_seed(11)
    again = ra(x.clone(), fill=0.5)
    assert torch.equal(y, again) and y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = ((y - x).abs().amax((1, 2, 3)) > 1.5 / 255).float().mean()
    assert 0.55 < changed < 0.95  # no op at all for 1/4 of the images (p=0.5, n=2); a few ops may do nothing
    assert not torch.equal(ra(x.clone()), y)


# ---------------------------------------------------------------- Random Erasing

@pytest.mark.parametrize("remode", ["pixel", "const"])
def test_random_erasing_rate_and_area(remode):
    x = torch.full((600, 3, 64, 64), 255, dtype=torch.uint8)
    y = BatchAugment((0.0,) * 3, (1.0,) * 3, reprob=0.4, remode=remode)(x)  # un-erased pixels are exactly 1
    erased = y != 1
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    hit = erased.flatten(1).any(1)
    assert abs(hit.float().mean() - 0.4) < 0.06
    mask = erased[hit, 0]
    area = mask.flatten(1).sum(1)
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(area, rows.sum(1) * cols.sum(1)), "each erased area is one rectangle"
    frac = area.float() / (64 * 64)
    assert frac.min() > 0.02 * 0.85 and frac.max() < 1 / 3 * 1.05  # timm's scale bounds, up to side rounding
    assert frac.min() < 0.05 and frac.max() > 0.2
    values = y[erased]
    if remode == "const":
        assert (values == 0).all()
    else:
        assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


# ---------------------------------------------------------------- Mixup / CutMix

def _mix_batch(b=8, c=3, size=16, seed=0):
    """Images with all-distinct pixels and labels whose mirror partners differ."""
    x = torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))
    return x, torch.arange(b)


def _lam(y, labels, smoothing, k):
    """lam read back off the soft targets: the own class's weight, smoothing removed."""
    own = y.gather(1, labels.view(-1, 1)).squeeze(1)
    return ((own - smoothing / k) / (1 - smoothing)).mean().item()


def test_mixup_targets_rows_sum_to_one_and_smooth():
    x, labels = _mix_batch()
    y = Mixup(num_classes=10)(x, labels)[1]
    assert y.shape == (8, 10) and y.dtype == torch.float32 and torch.allclose(y.sum(1), torch.ones(8))
    x2, y2 = Mixup(prob=0.0, label_smoothing=0.1, num_classes=10)(x, labels)
    assert torch.equal(x2, x)
    assert torch.allclose(y2, F.one_hot(labels, 10).float() * 0.9 + 0.01)


def test_mixup_only_when_switch_prob_0_weights_match_pixels():
    x, labels = _mix_batch()
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.0, label_smoothing=0.1, num_classes=8)
    for seed in range(20):
        torch.manual_seed(seed)
        out, y = mix(x, labels)
        lam = _lam(y, labels, 0.1, 8)
        d = x - x.flip(0)  # out = partner + lam (x - partner), one lam for the batch
        pixel_lam = ((out - x.flip(0)) * d).sum() / (d * d).sum()
        assert abs(pixel_lam - lam) < 1e-4
        assert torch.allclose(out, x.flip(0) + lam * d, atol=1e-5), "a blend everywhere, no pasted box"
        assert torch.allclose(y.sum(1), torch.ones(8))


def test_cutmix_only_when_switch_prob_1_weights_match_pasted_area():
    x, labels = _mix_batch(size=20)
    original = x.clone()
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=1.0, label_smoothing=0.0, num_classes=8)
    areas = []
    for seed in range(30):
        torch.manual_seed(seed)
        out, y = mix(x, labels)
        own, partner = (out == x).all(1), (out == x.flip(0)).all(1)
        assert (own ^ partner).all(), "every pixel comes whole from one of the two images"
        pasted = partner[0]
        assert all(torch.equal(pasted, p) for p in partner), "one box for the whole batch"
        rows, cols = pasted.any(1), pasted.any(0)
        assert pasted.sum() == rows.sum() * cols.sum(), "a rectangle"
        lam = _lam(y, labels, 0.0, 8)
        assert abs((1 - pasted.float().mean()) - lam) < 1e-6
        assert torch.allclose(y.gather(1, labels.flip(0).view(-1, 1)).squeeze(1), torch.tensor(1 - lam), atol=1e-6)
        areas.append(pasted.float().mean().item())
    assert min(areas) < 0.2 and max(areas) > 0.4
    assert torch.equal(x, original), "the input batch is left alone"


def test_mixup_prob_and_beta_and_seed():
    x, labels = _mix_batch()
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, prob=0.5, label_smoothing=0.0, num_classes=8)
    lams = []
    torch.manual_seed(0)
    for _ in range(400):
        lams.append(_lam(mix(x, labels)[1], labels, 0.0, 8))
    lams = torch.tensor(lams)
    mixed = lams < 1 - 1e-6
    assert abs(mixed.float().mean() - 0.5) < 0.08
    assert abs(lams[mixed].mean() - 0.5) < 0.07  # Beta(0.8, 0.8) is symmetric
    torch.manual_seed(3)
    a = mix(x, labels)
    torch.manual_seed(3)
    b = mix(x, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mixup_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Mixup(prob=1.5, num_classes=10)
    with pytest.raises(ValueError):
        Mixup(mixup_alpha=-1, num_classes=10)
    assert not Mixup(mixup_alpha=0, cutmix_alpha=0, num_classes=10).enabled


# ---------------------------------------------------------------- repeated augmentation

@pytest.mark.parametrize("n, repeats", [(100, 3), (96, 3), (10, 4)])
def test_repeated_augmentation_order(n, repeats):
    order = ShardSampler(n, shuffle=True, seed=3, epoch=2, repeats=repeats).indices().tolist()
    assert len(order) == n
    drawn = order[::repeats]
    assert len(set(drawn)) == len(drawn) == math.ceil(n / repeats)
    for i, idx in enumerate(drawn):  # each drawn image `repeats` times in a row, the last one maybe cut short
        run = order[i * repeats:(i + 1) * repeats]
        assert run == [idx] * len(run) and (len(run) == repeats or i == len(drawn) - 1)
    assert order == ShardSampler(n, shuffle=True, seed=3, epoch=2, repeats=repeats).indices().tolist()
    assert order != ShardSampler(n, shuffle=True, seed=3, epoch=3, repeats=repeats).indices().tolist()
    plain = ShardSampler(n, shuffle=True, seed=3, epoch=2).indices().tolist()
    assert ShardSampler(n, shuffle=True, seed=3, epoch=2, repeats=1).indices().tolist() == plain
    assert drawn == plain[:len(drawn)], "the same shuffle, fewer distinct images"


def test_repeated_augmentation_through_the_loader_and_ranks():
    n = 120
    ds = InMemoryDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), [str(i) for i in range(n)],
                         (0.5,), (0.5,), "toy")
    plain = make_loader(ds, 16, shuffle=True, seed=1, epoch=0, drop_last=True)
    loader = make_loader(ds, 16, shuffle=True, seed=1, epoch=0, drop_last=True, repeats=3)
    assert len(loader) == len(plain) == 7
    counts = Counter(torch.cat([y for _, y in loader]).tolist())
    assert sorted(counts.values()) == [1] + [3] * 37  # 40 drawn x 3 = 120, of which 7 batches of 16 are used
    shards = [torch.cat([y for _, y in make_loader(ds, 10, shuffle=True, seed=1, rank=r, world_size=3, repeats=3)])
              for r in range(3)]
    assert all(torch.equal(shards[0], s) for s in shards), "the copies of an image go one to each rank, same step"
    with pytest.raises(ValueError, match="repeats"):
        ShardSampler(10, shuffle=True, repeats=0)
