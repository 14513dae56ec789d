"""A fixed, seeded, class-balanced share of a labelled dataset: "few labels" as one number; and a validation split carved from the training images.

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


def balanced_indices(targets: torch.Tensor, num_classes: int, labels_per_class: float, seed: int,
                     field: str = "labels_per_class") -> torch.Tensor:
    """Sorted indices of the kept images: per class, the first of a seeded permutation; errors name
    ``field``, the setting that asked for them."""
    if labels_per_class <= 0:
        raise VitkitError(f"{field} must be positive (K images per class, or a fraction below 1), "
                          f"got {labels_per_class}")
    if labels_per_class >= 1 and labels_per_class != int(labels_per_class):
        raise VitkitError(f"{field} {labels_per_class}: a count of images must be whole (or give a "
                          "fraction below 1)")
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        k = int(labels_per_class) if labels_per_class >= 1 else max(1, math.floor(len(idx) * labels_per_class))
        if k > len(idx):
            raise VitkitError(f"{field} {k}: class {c} has only {len(idx)} training images")
        kept.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.cat(kept).sort().values


VALIDATION_SEED = 1234  # one validation draw for every run seed: runs that differ in seed compare on the same images


def labelled_subset(ds: ImageDataset, labels_per_class: float, seed: int) -> ImageDataset:
    """The dataset cut to ``labels_per_class`` images of each class (same classes, stats and flips)."""
    idx = balanced_indices(ds.targets, len(ds.classes), labels_per_class, seed)
    return take(ds, idx, f"{ds.name}[{labels_per_class:g} per class, seed {seed}]")


def split_validation(ds: ImageDataset, share: float) -> tuple[ImageDataset, ImageDataset]:
    """(the rest, validation): a fixed class-balanced ``share`` of ``ds`` (a count per class if >= 1)
    held out, so recipes are chosen without looking at the test split."""
    val_idx = balanced_indices(ds.targets, len(ds.classes), share, VALIDATION_SEED, "val_from_train")
    keep = torch.ones(len(ds.targets), dtype=torch.bool)
    keep[val_idx] = False
    if not keep.any():
        raise VitkitError(f"val_from_train {share:g} leaves no training images in {ds.name}")
    rest = torch.nonzero(keep).flatten()
    return take(ds, rest, f"{ds.name}[train]"), take(ds, val_idx, f"{ds.name}[validation from train]")


def take(ds: ImageDataset, idx: torch.Tensor, name: str) -> ImageDataset:
    """The images ``idx`` of ``ds`` as a dataset of the same kind, classes, stats and flips."""
    if isinstance(ds, InMemoryDataset):
        out: ImageDataset = InMemoryDataset(ds.images[idx], ds.targets[idx], ds.classes, ds.mean, ds.std, name)
    elif isinstance(ds, LazyImageDataset):
        out = LazyImageDataset([ds.paths[i] for i in idx], ds.targets[idx].tolist(), ds.classes, ds.mean, ds.std,
                               name, ds.img_size, ds.in_chans, ds.resize)
    else:
        raise VitkitError(f"{name}: cannot take a subset of a {type(ds).__name__}")
    out.flip_invariant = ds.flip_invariant
    return out
