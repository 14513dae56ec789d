"""Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grayscale clothing images in 10 classes.

Files are looked for in ``data_dir`` when given (and only there), else in ``$VITKIT_DATA``,
the Debian package's ``/usr/share/datasets/fashion-mnist`` and ``~/.cache/vitkit/fashion-mnist``;
if absent they are downloaded (into ``data_dir`` or the cache), verified, then renamed into
place so an interrupted download never leaves a half file behind.

Checksums: a file is accepted if the MD5 of the ``.gz`` equals the published one, OR the MD5
of its decompressed payload equals the pinned payload MD5. The second test exists because
Debian's ``dataset-fashion-mnist`` recompressed the files: their ``.gz`` bytes (and MD5s)
differ from the published ones while the IDX payloads are byte-identical.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import VitkitError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/vitkit/fashion-mnist").expanduser()
MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"]
HOW_TO_GET = ("install them with `apt-get install dataset-fashion-mnist`, or put the four .gz files from "
              f"{MIRRORS[0]} in a folder and pass it as --data-dir")


class IdxFile(NamedTuple):
    name: str
    gz_md5: str        # published by Zalando
    payload_md5: str   # of the decompressed IDX bytes, identical in every faithful copy
    shape: tuple[int, ...]


FILES = {
    "train": (IdxFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
              IdxFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                      "9018921c3c673c538a1fc5bad174d6f9", (60000,))),
    "test": (IdxFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                     "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
             IdxFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                     "15d484375f8d13e6eb1aabb0c3f46965", (10000,))),
}

_cache: dict[tuple[str, int, int], np.ndarray] = {}


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None,
                       download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,1,28,28], labels int64 [N])`` for split "train" (60k) or "test" (10k)."""
    image_file, label_file = FILES[split]
    images = _read(_locate(image_file, data_dir, download), image_file)
    labels = _read(_locate(label_file, data_dir, download), label_file)  # checksums guarantee labels 0..9
    # copies: the cached arrays are read-only views of the decompressed bytes and must stay intact
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    env = os.environ.get("VITKIT_DATA")
    dirs = [Path(env), Path(env) / "fashion-mnist"] if env else []
    return dirs + [SYSTEM_DIR, CACHE_DIR]


def _locate(f: IdxFile, data_dir: str | os.PathLike | None, download: bool) -> Path:
    dirs = _search_dirs(data_dir)
    for d in dirs:
        if (d / f.name).is_file():
            return d / f.name
    where = ", ".join(str(d) for d in dirs)
    if not download:
        raise VitkitError(f"Fashion-MNIST file {f.name} not found in {where} (downloading is off); {HOW_TO_GET}")
    return _download(f, Path(data_dir) if data_dir is not None else CACHE_DIR, where)


def _download(f: IdxFile, dest_dir: Path, where: str) -> Path:
    """Fetch into a temporary file beside the destination and rename it only once verified (the
    folder is made only then: a failed download leaves no empty folder behind)."""
    errors = []
    for mirror in MIRRORS:
        try:
            with urllib.request.urlopen(mirror + f.name, timeout=30) as r:
                data = r.read()
        except OSError as e:
            errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
            continue
        try:
            _verify(data, f, mirror + f.name)
        except VitkitError as e:  # a bad mirror: try the next one
            errors.append(str(e))
            continue
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VitkitError(f"{dest_dir}: cannot create the Fashion-MNIST download folder ({e}); "
                              f"{HOW_TO_GET}") from e
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{f.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, dest_dir / f.name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest_dir / f.name
    raise VitkitError(f"Fashion-MNIST file {f.name} not found in {where} and could not be downloaded "
                      f"({'; '.join(errors)}); {HOW_TO_GET}")


def _read(path: Path, f: IdxFile) -> np.ndarray:
    """Verified, decoded IDX array; cached per process since decoding 60k images takes ~0.3 s."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        data = path.read_bytes()
        _cache[key] = _parse_idx(path, _verify(data, f, path), f)
    return _cache[key]


def _verify(data: bytes, f: IdxFile, source: str | Path) -> bytes:
    """Decompressed payload of ``data`` (read from ``source``) if it passes either checksum
    (see the module docstring)."""
    gz_md5 = hashlib.md5(data).hexdigest()
    try:
        payload = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise VitkitError(f"{source}: truncated or not a gzip file ({e}); delete it and retry, or {HOW_TO_GET}") \
            from e
    if gz_md5 != f.gz_md5:
        payload_md5 = hashlib.md5(payload).hexdigest()
        if payload_md5 != f.payload_md5:
            raise VitkitError(f"{source}: checksum mismatch: MD5 of the .gz is {gz_md5} (published {f.gz_md5}) "
                              f"and of its contents {payload_md5} (expected {f.payload_md5}); "
                              f"the file is corrupt or not Fashion-MNIST")
    return payload


def _parse_idx(path: Path, payload: bytes, f: IdxFile) -> np.ndarray:
    """IDX: 2 zero bytes, type code 0x08 (uint8), number of dimensions, big-endian sizes, data."""
    ndim = len(f.shape)
    header = 4 + 4 * ndim
    if len(payload) < header or payload[:4] != bytes([0, 0, 8, ndim]):
        raise VitkitError(f"{path}: not an IDX file of {ndim}-D uint8 data (magic {payload[:4].hex()}, "
                          f"expected 0000080{ndim})")
    shape = tuple(int(d) for d in np.frombuffer(payload, ">u4", ndim, 4))
    if shape != f.shape or len(payload) != header + int(np.prod(shape)):
        raise VitkitError(f"{path}: IDX shape {shape} with {len(payload) - header} data bytes, expected {f.shape}")
    return np.frombuffer(payload, np.uint8, offset=header).reshape(shape)
