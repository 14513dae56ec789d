"""A fixed, seeded, class-balanced share of a labelled dataset: "few labels" as one number.

``labels_per_class=K`` keeps K images of every class (K >= 1), a fraction below 1 keeps that share
of each class (at least one image). The draw depends only on the seed and the labels, so every run
with the same seed trains on the same images, and seeds 0, 1, 2 give the repeated draws a mean over
subsets needs.
"""
from __future__ import annotations

import math

import torch

from ..errors import VitkitError
from .dataset import ImageDataset, InMemoryDataset, LazyImageDataset


def balanced_indices(targets: torch.Tensor, num_classes: int, labels_per_class: float, seed: int) -> torch.Tensor:
    """Sorted indices of the kept images: per class, the first of a seeded permutation."""
    if labels_per_class <= 0:
        raise VitkitError(f"labels_per_class must be positive (K images per class, or a fraction below 1), "
                          f"got {labels_per_class}")
    if labels_per_class >= 1 and labels_per_class != int(labels_per_class):
        raise VitkitError(f"labels_per_class {labels_per_class}: a count of images must be whole (or give a "
                          "fraction below 1)")
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        k = int(labels_per_class) if labels_per_class >= 1 else max(1, math.floor(len(idx) * labels_per_class))
        if k > len(idx):
            raise VitkitError(f"labels_per_class {k}: class {c} has only {len(idx)} training images")
        kept.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.cat(kept).sort().values


def labelled_subset(ds: ImageDataset, labels_per_class: float, seed: int) -> ImageDataset:
    """The dataset cut to ``labels_per_class`` images of each class (same classes, stats and flips)."""
    idx = balanced_indices(ds.targets, len(ds.classes), labels_per_class, seed)
    name = f"{ds.name}[{labels_per_class:g} per class, seed {seed}]"
    if isinstance(ds, InMemoryDataset):
        out: ImageDataset = InMemoryDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.mean, ds.std, name)
    elif isinstance(ds, LazyImageDataset):
        out = LazyImageDataset([ds.paths[i] for i in idx], ds.targets[idx].tolist(), ds.classes, ds.mean, ds.std,
                               name, ds.img_size, ds.in_chans, ds.resize)
    else:
        raise VitkitError(f"labels_per_class: cannot take a subset of a {type(ds).__name__}")
    out.flip_invariant = ds.flip_invariant
    return out
