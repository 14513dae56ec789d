"""Write a few dataset images as PNG files: something to feed `predict` and `explain`."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image

from .dataset import ImageDataset


def save_samples(ds: ImageDataset, out_dir: str | Path, count: int = 8, seed: int = 0) -> list[Path]:
    """``count`` images drawn without replacement (seeded), named ``<index>_<class>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    paths = []
    for i in picks:
        image, label = ds[i]
        array = image.permute(1, 2, 0).numpy()
        pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        name = re.sub(r"[^A-Za-z0-9]+", "-", ds.classes[label]).strip("-")
        paths.append(out / f"{i:05d}_{name}.png")
        pil.save(paths[-1])
    return paths
