"""WebDataset ``.tar`` shards: the format timm and OpenCLIP stream big datasets from.

A shard is a plain tar file of samples, each a group of members sharing a key: ``KEY.png`` (the image)
and ``KEY.cls`` (its class index as decimal text). ``_info.json`` beside the shards lists each split's
files and sample counts as timm's WebDataset reader expects, plus the class names and normalisation.

Reading indexes each tar's members once (their headers only: a seek per member) and then reads a
sample's bytes by offset in DataLoader worker processes, decoding as it goes. So nothing is decoded
up front, and the dataset keeps vitkit's sampler: the order of an epoch, the split over ranks and an
exact resume work as for any other dataset. No ``webdataset`` package is needed.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import VitkitError
from ..fileio import atomic_write, write_json
from ..progress import progress
from .dataset import ImageDataset
from .images import image_from_bytes, image_to_tensor
from .transforms import match_stats

INFO = "_info.json"
SHARD_SIZE = 10_000  # samples a shard: ~10-100 MB of PNGs, as WebDataset advises (big sequential reads)


def write_shards(ds: ImageDataset, out: str | os.PathLike, split: str, shard_size: int = SHARD_SIZE) -> list[Path]:
    """``ds`` as ``{split}-NNNNNN.tar`` shards in ``out``; ``_info.json`` records the split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for first in progress(range(0, len(ds), shard_size), desc=f"writing {split} shards", leave=False):
        path = out / f"{split}-{first // shard_size:06d}.tar"
        atomic_write(path, lambda tmp, first=first: _write_tar(ds, range(first, min(first + shard_size, len(ds))),
                                                               tmp))
        files.append(path)
    info_path = out / INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"splits": {}}
    info.update(classes=list(ds.classes), mean=list(ds.mean), std=list(ds.std), flip_invariant=ds.flip_invariant,
                in_chans=int(ds[0][0].shape[0]))
    info["splits"][split] = {"num_samples": len(ds), "filenames": [f.name for f in files],
                             "shard_lengths": [min(shard_size, len(ds) - i) for i in range(0, len(ds), shard_size)]}
    write_json(info_path, info)
    return files


def _write_tar(ds: ImageDataset, indices: range, path: str | os.PathLike) -> None:
    with tarfile.open(path, "w") as tar:
        for i in indices:
            image, label = ds[i]
            buffer = io.BytesIO()
            array = image.permute(1, 2, 0).numpy()
            Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
            for suffix, data in (("png", buffer.getvalue()), ("cls", str(int(label)).encode())):
                member = tarfile.TarInfo(f"{i:09d}.{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


class ShardDataset(ImageDataset):
    """One split of a shard folder: ``ds[i] -> (uint8 [C,H,W], label)``, decoded on access."""

    def __init__(self, root: str | os.PathLike, split: str, in_chans: int | None = None, img_size: int | None = None):
        root = Path(root).expanduser()
        info = _info(root)
        splits = info["splits"]
        name = split if split in splits else ("test" if split == "val" and "test" in splits else
                                               "val" if split == "test" and "val" in splits else None)
        if name is None:
            raise VitkitError(f"{root}: no {split} shards (has {', '.join(splits)}); `vitkit shards` writes them")
        self.in_chans, self.img_size = in_chans or info.get("in_chans", 3), img_size
        mean, std = (match_stats(info[k], self.in_chans) for k in ("mean", "std"))
        super().__init__(info["classes"], mean, std, f"shards:{root}[{name}]")
        self.flip_invariant = info.get("flip_invariant", True)
        self.index: list[tuple[str, int, int, int]] = []  # (shard, offset, size, label) per sample
        for filename in splits[name]["filenames"]:
            self.index += _index_tar(root / filename)
        self.targets = torch.tensor([label for *_, label in self.index], dtype=torch.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, offset, size, label = self.index[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        im = image_from_bytes(data, f"{path}[{i}]", self.in_chans)
        x = image_to_tensor(im)
        if self.img_size and x.shape[-1] != self.img_size:
            from .transforms import resize_images
            x = resize_images(x[None], self.img_size)[0]
        return x, label


def _info(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / INFO).read_text())
    except FileNotFoundError:
        raise VitkitError(f"{root}: no {INFO} (not a folder written by `vitkit shards`)") from None
    except json.JSONDecodeError as e:
        raise VitkitError(f"{root / INFO}: not valid JSON ({e})") from e


def _index_tar(path: Path) -> list[tuple[str, int, int, int]]:
    """(file, data offset, size, label) of every sample in a shard, from the member headers."""
    images, labels = {}, {}
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                key, _, suffix = member.name.rpartition(".")
                if suffix in ("png", "jpg", "jpeg", "webp"):
                    images[key] = (member.offset_data, member.size)
                elif suffix == "cls":
                    labels[key] = int(tar.extractfile(member).read())
    except (OSError, tarfile.TarError, ValueError) as e:
        raise VitkitError(f"{path}: not a readable shard ({e})") from e
    missing = sorted(set(images) ^ set(labels))
    if missing:
        raise VitkitError(f"{path}: sample {missing[0]} has no {'label' if missing[0] in images else 'image'}")
    return [(str(path), *images[k], labels[k]) for k in sorted(images)]
