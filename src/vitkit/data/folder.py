"""A folder of images, one sub-folder per class (torchvision's ImageFolder layout).

    root/<class>/<image>                     split by ``val_fraction`` (stratified, by file name)
    root/train/<class>/<image> + root/val/   (or root/test/) used as the splits as they are

Bad input is reported before training starts, all of it at once: the layout is checked
while listing files, and folders that fit a memory budget are decoded up front (which
also makes every epoch after the first free); bigger ones get their headers checked and
are decoded lazily in DataLoader workers.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..errors import VitkitError
from ..progress import progress
from .dataset import ImageDataset, InMemoryDataset, LazyImageDataset, load_resized
from .images import IMAGE_EXTENSIONS, env_int, max_image_pixels, open_header
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalResize, match_stats

IGNORED_FILES = {"thumbs.db", "desktop.ini", "__macosx"}
MEMORY_BUDGET_MB: int | None = None  # None: $VITKIT_FOLDER_MEMORY_MB, else 512 (read per dataset)
"""Splits whose decoded pixels fit in this many MB are decoded once, up front."""
MAX_LISTED = 10


def load_folder(root: str | os.PathLike, split: str, *, img_size: int = 224, in_chans: int = 3,
                val_fraction: float = 0.1, seed: int = 0, memory_budget_mb: int | None = None,
                resize: EvalResize | None = None, unlabeled: bool = False) -> ImageDataset:
    """The ``split`` ("train", "val"/"test" for the held-out part, or "all") of an image folder.

    Images are converted to ``in_chans`` channels, their shorter side resized to ``img_size``
    and center-cropped (or as ``resize`` says: pretrained weights' own crop). Normalisation
    stats are ImageNet's: these are natural images, and pretrained ViTs expect exactly those.
    ``unlabeled``: every image under ``root``, sub-folders or not, in one class "image" (self-supervised
    pretraining needs no labels, so a plain folder of photos will do), split by ``val_fraction``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VitkitError(f"{root}: dataset folder does not exist" if not root.exists()
                          else f"{root}: is a file, expected a folder of class sub-folders")
    if not 0 <= val_fraction < 1:
        raise VitkitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not unlabeled:
        _check_split_names(root)
    if unlabeled:
        classes, samples, problems = _scan_unlabeled(root, split, val_fraction, seed)
    elif (root / "train").is_dir() and _subdirs(root / "train"):
        if split == "all":
            raise VitkitError(f"{root}: has split folders (train/, ...); choose one of them as the split")
        classes, samples, problems = _from_split_dirs(root, split)
    elif split == "all":
        classes, samples, problems = _scan(root)
    else:
        classes, samples, problems = _scan(root)
        samples = _stratified_part(samples, len(classes), val_fraction, seed, held_out=split != "train",
                                   root=root)
        if not samples and not problems:
            why = ("val_fraction is 0" if val_fraction == 0 else
                   f"every class has one image, and holding out {val_fraction:g} of a class keeps at least one "
                   "image for training")
            raise VitkitError(f"{root}: no held-out images ({why}); add images, or a val/ folder beside train/")
    paths, targets = [p for p, _ in samples], [t for _, t in samples]
    mean, std = match_stats(IMAGENET_MEAN, in_chans), match_stats(IMAGENET_STD, in_chans)
    name = f"folder:{root}[{split}]"
    if memory_budget_mb is None:
        memory_budget_mb = MEMORY_BUDGET_MB or env_int("VITKIT_FOLDER_MEMORY_MB", 512)
    budget = memory_budget_mb * 2**20
    max_image_pixels()  # a typo in $VITKIT_MAX_IMAGE_PIXELS: one error now, not one per image
    in_memory = len(paths) * in_chans * img_size**2 <= budget
    if in_memory:
        images, failures = _decode_all(paths, img_size, in_chans, resize, desc=f"decoding {root.name}/ {split}")
    else:
        failures = _check_headers(paths)
    if problems or failures:  # the layout's problems and the unreadable images, in one listing
        counts = ([f"{len(problems)} problem(s) in the folder"] if problems else []) + \
                 ([f"{len(failures)} of {len(paths)} images could not be read"] if failures else [])
        raise VitkitError(_listing(f"{name}: {', '.join(counts)}", problems + failures))
    if in_memory:
        ds = InMemoryDataset(images, torch.tensor(targets), classes, mean, std, name)
    else:
        ds = LazyImageDataset(paths, targets, classes, mean, std, name, img_size, in_chans, resize)
    ds.flip_invariant = declared_properties(root).get("flip_invariant", True)
    return ds


PROPERTIES_FILE = "dataset.yaml"
PROPERTIES = {"flip_invariant": bool}


def declared_properties(root: Path) -> dict[str, Any]:
    """What a folder says of its images in ``dataset.yaml`` at its root, e.g. ``flip_invariant: false``
    for text, digits or anything a mirror changes (training then draws no flips)."""
    path = root / PROPERTIES_FILE
    if not path.is_file():
        return {}
    try:
        props = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise VitkitError(f"{path}: unreadable ({str(e).splitlines()[0]})") from e
    if not isinstance(props, dict):
        raise VitkitError(f"{path}: expected a mapping such as 'flip_invariant: false'")
    for key, value in props.items():
        if key not in PROPERTIES:
            raise VitkitError(f"{path}: unknown property {key!r} (known: {', '.join(PROPERTIES)})")
        if not isinstance(value, PROPERTIES[key]):
            raise VitkitError(f"{path}: {key} must be true or false, got {value!r}")
    return props


SPLIT_LIKE = {"train", "training", "val", "valid", "validation", "dev", "eval", "test", "testing"}


def _check_split_names(root: Path) -> None:
    """Folders of class folders named like splits but not exactly train/ val/ test/ would be read
    as classes (Train/) or ignored (validation/ beside train/); so would a split layout without
    train/, with images straight in a split folder, or with a class folder beside the splits:
    each silently changes what is trained or scored. (A class that happens to be called "Train"
    holds images, not folders.)"""
    odd = [d for d in _subdirs(root)
           if d.lower() in SPLIT_LIKE and d not in ("train", "val", "test") and _subdirs(root / d)]
    if odd:
        raise VitkitError(f"{root}: {', '.join(d + '/' for d in odd)} look(s) like a split; vitkit reads the splits "
                          "train/, val/ and test/ (lowercase): rename them")
    splits = [d for d in ("train", "val", "test") if (root / d).is_dir()]
    if len(splits) < 2 and not any(_subdirs(root / d) for d in splits):
        return  # class folders in the root (one of them may be called "train")
    names = ", ".join(d + "/" for d in splits)
    if "train" not in splits:
        raise VitkitError(f"{root}: has {names} but no train/; put the training images in train/<class>/, or all "
                          "class folders directly in the root to split by val_fraction")
    flat = [d for d in splits if not _subdirs(root / d)]
    if flat:
        raise VitkitError(f"{root}: {', '.join(d + '/' for d in flat)} hold(s) images, not class folders "
                          f"(expected {root}/{flat[0]}/<class>/<image>)")
    extra = [d + "/" for d in _subdirs(root) if d not in splits and any(root.joinpath(d).iterdir())]
    extra += [p.name for p in _loose_images(root)]
    if extra:
        raise VitkitError(f"{root}: {', '.join(extra)} sit(s) beside {names} and would be ignored; move "
                          "it into the splits or out of the folder")


def folder_root(spec: str | None) -> Path | None:
    """The folder a ``folder:PATH`` dataset spec names, absolute; None for a built-in dataset or no path."""
    path = spec[len("folder:"):].strip() if (spec or "").startswith("folder:") else ""
    return Path(path).expanduser().resolve() if path else None


def has_separate_test(spec: str) -> bool:
    """Whether dataset ``spec`` has a test split apart from its validation split: only a folder
    with train/, val/ and test/ (elsewhere "val" and "test" name the same held-out images)."""
    root = folder_root(spec)
    return root is not None and all((root / d).is_dir() for d in ("train", "val", "test"))


def _from_split_dirs(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """The split's classes, (file, label) pairs and layout problems; only its own folder is scanned, so the
    other split's problems are reported once, by its own call."""
    held_out = [d for d in (("test", "val") if split == "test" else ("val", "test")) if (root / d).is_dir()]
    if not held_out:
        raise VitkitError(f"{root}: has train/ but no val/ or test/ folder; add one, or put the class "
                          "folders directly in the root to split by val_fraction")
    train_classes, other_classes = _subdirs(root / "train"), _subdirs(root / held_out[0])
    if train_classes != other_classes:
        only_train = ", ".join(sorted(set(train_classes) - set(other_classes))) or "none"
        only_other = ", ".join(sorted(set(other_classes) - set(train_classes))) or "none"
        raise VitkitError(f"{root}: class folders of train/ and {held_out[0]}/ differ (only in train/: "
                          f"{only_train}; only in {held_out[0]}/: {only_other})")
    return _scan(root / ("train" if split == "train" else held_out[0]))


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """Sorted class names, (file, label) pairs (sub-folders of a class included) and every layout
    problem, returned rather than raised so that one run lists them with the unreadable images."""
    classes = _subdirs(root)
    if not classes:
        raise VitkitError(f"{root}: no class folders found (expected {root}/<class name>/<image files>)")
    samples, empty, unknown = [], [], []
    for label, name in enumerate(classes):
        n = len(samples)
        for path in files_under(root / name):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((path, label))
            else:
                unknown.append(str(path))
        if len(samples) == n:
            empty.append(str(root / name))
    problems = ([f"empty class folder {p}" for p in empty]
                + [f"{p} (unknown image extension; expected one of {' '.join(IMAGE_EXTENSIONS)})" for p in unknown]
                + [f"{p} (beside the class folders, in none: it would be ignored)" for p in _loose_images(root)])
    return classes, samples, problems


def _scan_unlabeled(root: Path, split: str, val_fraction: float, seed: int
                    ) -> tuple[list[str], list[tuple[Path, int]], list[str]]:
    """Every image under ``root`` as one class, the split held out by file name as for classes."""
    samples = [(p, 0) for p in files_under(root) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise VitkitError(f"{root}: no images found (extensions {' '.join(IMAGE_EXTENSIONS)})")
    if split != "all":
        samples = _stratified_part(samples, 1, val_fraction, seed, held_out=split != "train", root=root)
    return ["image"], samples, []


def _loose_images(d: Path) -> list[Path]:
    """Image files straight in a folder of class (or split) folders: in no class, so never read."""
    return sorted(p for p in d.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not _ignored(p.name))


def files_under(root: Path) -> Iterator[Path]:
    """Every file under ``root`` that is not hidden or OS clutter, in sorted order; linked folders are
    followed (a class assembled from links is common), each real folder once, so a link loop ends."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        yield from (Path(dirpath) / f for f in sorted(filenames) if not _ignored(f))


def _subdirs(d: Path) -> list[str]:
    return sorted(e.name for e in d.iterdir() if e.is_dir() and not _ignored(e.name))


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def _stratified_part(samples: list[tuple[Path, int]], num_classes: int, val_fraction: float, seed: int,
                     held_out: bool, root: Path) -> list[tuple[Path, int]]:
    """Hold out ``val_fraction`` of every class (at least one image of any class with two or
    more, never all of one), the class balance the same on both sides.

    Which images are held out depends on each file's own name (a hash of ``seed`` and its path
    under ``root``), not on the rest of the listing: images added to the folder later move at
    most an image or two per class across the split, so ``eval`` and ``--resume`` still see
    the split the run was trained with (a shuffle of the whole listing would reshuffle it)."""
    labels = np.array([t for _, t in samples])
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        ranked = sorted(idx, key=lambda i: _file_rank(samples[i][0], root, seed))
        chosen.extend(ranked[:n_val] if held_out else ranked[n_val:])
    return [samples[i] for i in sorted(chosen)]


def _file_rank(path: Path, root: Path, seed: int) -> bytes:
    """A seeded pseudo-random rank that depends on this file's path under the root alone."""
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()


def _decode_all(paths: list[Path], img_size: int, in_chans: int, resize: EvalResize | None, desc: str
                ) -> tuple[torch.Tensor, list[str]]:
    """All images into one uint8 [N,C,S,S] tensor, in threads (Pillow decodes without the GIL), and
    what was wrong with each image that could not be read."""
    images = torch.empty((len(paths), in_chans, img_size, img_size), dtype=torch.uint8)
    failures = []

    def decode(i: int) -> None:
        try:
            images[i] = load_resized(paths[i], img_size, in_chans, resize)
        except VitkitError as e:
            failures.append((i, str(e)))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in progress(pool.map(decode, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False):
            pass
    return images, [msg for _, msg in sorted(failures)]


def _check_headers(paths: list[Path]) -> list[str]:
    """Without decoding pixels: catches unreadable, empty, unknown-format and oversized files."""
    failures = []
    for p in progress(paths, desc="checking images", unit="img", leave=False):
        try:
            open_header(p).close()
        except VitkitError as e:
            failures.append(str(e))
    return failures


def _listing(intro: str, items: list[str]) -> str:
    """One line: the first MAX_LISTED items, then how many more."""
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{intro}: {'; '.join(items[:MAX_LISTED])}{more}"
