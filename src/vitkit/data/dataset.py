"""The two kinds of dataset every loader returns: decoded in memory, or decoded from disk per item.

Both give ``ds[i] -> (uint8 [C,H,W], label)`` plus ``classes``, ``mean`` and ``std``, so the
trainer does not care where the pixels come from; ``make_loader`` batches the in-memory
kind by indexing tensors directly, which is what makes small datasets fast on a CPU.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils.data import Dataset

from .images import image_from_bytes, image_to_tensor, open_image
from .transforms import EvalResize


class ImageDataset(Dataset):
    """Labelled images of one size and channel count, with the normalisation stats to use."""

    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    targets: torch.Tensor
    flip_invariant: bool = True  # a mirrored image shows the same class (clothes, photos; not digits): the
                                 # default training augmentation flips only where this holds

    def __init__(self, classes: Sequence[str], mean: Sequence[float], std: Sequence[float], name: str):
        self.classes = list(classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.name = name

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, classes={len(self.classes)})"


class InMemoryDataset(ImageDataset):
    """``images`` uint8 [N,C,H,W] and ``targets`` int64 [N], already at the model's size."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], name: str):
        super().__init__(classes, mean, std, name)
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            raise ValueError(f"images must be uint8 [N,C,H,W] matching targets, got {images.dtype} "
                             f"{tuple(images.shape)} for {len(targets)} targets")
        self.images, self.targets = images, targets.to(torch.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


class LazyImageDataset(ImageDataset):
    """Image files decoded on access (in DataLoader workers) for folders too big to hold in memory."""

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence[int], classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], name: str, img_size: int, in_chans: int,
                 resize: EvalResize | None = None):
        super().__init__(classes, mean, std, name)
        self.paths = [str(p) for p in paths]
        self.targets = torch.as_tensor(list(targets), dtype=torch.int64)
        self.img_size, self.in_chans, self.resize = img_size, in_chans, resize

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_resized(self.paths[i], self.img_size, self.in_chans, self.resize), int(self.targets[i])


def load_resized(path: str | os.PathLike, img_size: int, in_chans: int, resize: EvalResize | None = None
                 ) -> torch.Tensor:
    """The folder pipeline for one file: decode, convert channels, resize + center crop (``resize``:
    the crop and interpolation pretrained weights ask for; default the whole shorter side, bicubic)."""
    resize = resize or EvalResize()
    im = open_image(path, in_chans, draft_size=resize.scale_size(img_size))
    return image_to_tensor(resize(im, img_size))


def resized_from_bytes(data: bytes, name: str, img_size: int, in_chans: int, resize: EvalResize | None = None
                       ) -> torch.Tensor:
    """:func:`load_resized` for an image in memory (an upload); errors name it ``name``."""
    resize = resize or EvalResize()
    im = image_from_bytes(data, name, in_chans, draft_size=resize.scale_size(img_size))
    return image_to_tensor(resize(im, img_size))
