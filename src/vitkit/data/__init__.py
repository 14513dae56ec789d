"""Data: datasets by name, image decoding, batch transforms and deterministic loaders.

``load_dataset("fashion-mnist" | "digits" | "folder:/path", split)`` returns an
``ImageDataset`` whose items are uint8 [C,H,W] at the requested size and channel count;
``make_loader`` batches it; ``normalize`` turns a uint8 batch into the model's input, or
``BatchAugment`` does with DeiT's random augmentations, and ``Mixup`` mixes the result.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import VitkitError
from . import digits, fashion_mnist
from .dataset import ImageDataset, InMemoryDataset, LazyImageDataset, load_resized, resized_from_bytes
from .folder import folder_root, has_separate_test, load_folder
from .images import IMAGE_EXTENSIONS, open_image
from .loader import ShardSampler, make_loader
from .mixup import Mixup
from .samples import save_samples
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalResize, match_channels, match_stats, normalize,
                         random_crop_flip, resize_center_crop, resize_images)

if TYPE_CHECKING:
    from .augment import BatchAugment, RandAugment


def __getattr__(name: str):
    """``BatchAugment`` and ``RandAugment`` on first use: they import kornia (0.2 s), which
    inference never needs."""
    if name in ("BatchAugment", "RandAugment"):
        from . import augment
        return getattr(augment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": (fashion_mnist.MEAN, fashion_mnist.STD),
    "digits": (digits.MEAN, digits.STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""(mean, std) per channel, in the dataset's own channel count; folders use "imagenet"."""

DATASETS = ("fashion-mnist", "digits", "folder:PATH", "shards:PATH")
SPLITS = ("train", "test", "val", "all")  # "all": every image of a folder, unsplit


def load_dataset(spec: str, split: str, *, data_dir: str | os.PathLike | None = None, img_size: int | None = None,
                 in_chans: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = True, resize: EvalResize | None = None, unlabeled: bool = False) -> ImageDataset:
    """A split of a named dataset, at ``img_size`` (default: native, 224 for folders) with
    ``in_chans`` channels (default: native, 3 for folders).

    "val" and "test" both mean the held-out part; they differ only for a folder that has
    both val/ and test/ sub-folders. ``val_fraction`` and ``seed`` only apply to folders
    without such sub-folders; the built-in datasets have fixed splits. "all" is every image
    of a folder of class folders (to score a model on images it never trained on). ``resize``
    brings a folder's images to ``img_size`` as pretrained weights ask (see :class:`EvalResize`).
    ``unlabeled`` reads a folder as images alone, class folders or not (self-supervised pretraining).
    """
    if split not in SPLITS:
        raise VitkitError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if in_chans is not None and in_chans not in (1, 3):
        raise VitkitError(f"in_chans must be 1 or 3, got {in_chans}")
    if img_size is not None and img_size < 1:
        raise VitkitError(f"img_size must be positive, got {img_size}")
    if spec.startswith("shards:"):  # WebDataset .tar shards written by `vitkit shards`
        from .shards import ShardDataset
        return ShardDataset(spec[len("shards:"):], split, in_chans=in_chans, img_size=img_size)
    if spec.startswith("folder:"):
        if not spec[len("folder:"):].strip():
            raise VitkitError("folder: needs the folder's path, e.g. folder:~/photos")
        return load_folder(spec[len("folder:"):], split, img_size=img_size or 224, in_chans=in_chans or 3,
                           val_fraction=val_fraction, seed=seed, resize=resize, unlabeled=unlabeled)
    if split == "all" and spec in DATASETS:
        raise VitkitError(f"split 'all' is for folders of images; {spec} has fixed train and test splits")
    part = "train" if split == "train" else "test"
    if spec == "fashion-mnist":
        images, targets = fashion_mnist.load_fashion_mnist(part, data_dir, download)
        classes = fashion_mnist.CLASSES
    elif spec == "digits":
        images, targets = digits.load_digits(part)
        classes = digits.CLASSES
    else:
        hint = f" (for a folder of images write folder:{spec})" if os.path.isdir(spec) else ""
        raise VitkitError(f"unknown dataset {spec!r}: use one of {', '.join(DATASETS)}{hint}")
    c = in_chans or images.shape[1]
    images = match_channels(resize_images(images, img_size or images.shape[-1]), c)
    mean, std = DATASET_STATS[spec]
    ds = InMemoryDataset(images, targets, classes, match_stats(mean, c), match_stats(std, c), f"{spec}[{split}]")
    ds.flip_invariant = spec != "digits"  # a mirrored 2, 3, 4, 5, 7 or 9 is no digit
    return ds


__all__ = ["BatchAugment", "EvalResize", "Mixup", "RandAugment", "save_samples", "DATASET_STATS", "IMAGENET_MEAN",
           "IMAGENET_STD",
           "IMAGE_EXTENSIONS", "ImageDataset", "InMemoryDataset", "LazyImageDataset", "ShardSampler",
           "folder_root", "has_separate_test", "load_dataset", "load_folder", "load_resized", "make_loader", "match_channels",
           "match_stats", "normalize", "open_image", "random_crop_flip", "resize_center_crop", "resize_images",
           "resized_from_bytes"]
