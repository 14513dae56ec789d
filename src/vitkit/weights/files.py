"""Read tensors from a weights file without trusting it.

Files are recognised by their first bytes, not their extension: a ``.bin`` may be a
zip or a legacy pickle, and a renamed file should still load. Pickles are only ever
opened with ``torch.load(weights_only=True)``, which refuses any object other than
tensors and plain containers, so a file cannot run code on the user's machine.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import VitkitError

StateDict = dict[str, torch.Tensor]


def sniff(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle) or 'npz', from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its header length (8 bytes, little-endian) can begin with 0x80 or "PK" itself,
    # but only it is followed by "{" and fits in the file
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8:
        return "safetensors"
    if head[:2] == b"PK":
        return _zip_kind(path)
    if head[:1] == b"\x80":
        return "torch"
    raise VitkitError(f"{path}: not a weights file (expected safetensors, a PyTorch checkpoint or an .npz)")


def _zip_kind(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise VitkitError(f"{path}: damaged or truncated zip archive ({e})") from e
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise VitkitError(f"{path}: a zip archive that is neither a PyTorch checkpoint nor an .npz")


def read_tensors(path: str | Path) -> StateDict:
    """All tensors in the file, on the CPU, keyed as stored ('/'-separated for .npz)."""
    path = Path(path)
    if not path.is_file():
        raise VitkitError(f"{path}: no such file")
    reader = {"safetensors": _read_safetensors, "torch": _read_torch, "npz": _read_npz}[sniff(path)]
    tensors = reader(path)
    if not tensors:
        raise VitkitError(f"{path}: contains no tensors")
    return tensors


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string header of a safetensors file ({} for other kinds of file)."""
    if sniff(Path(path)) != "safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _read_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError for truncation, header or dtype problems
        raise VitkitError(f"{path}: unreadable safetensors file ({e})") from e


def _read_torch(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            raise VitkitError(f"{path}: refused to load: the pickle holds more than tensors (code or custom "
                              f"objects); only plain state dicts are read") from e
        raise VitkitError(f"{path}: unreadable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> StateDict:
    """Training scripts nest the weights under 'state_dict', 'model' or 'module' (DDP adds 'module.')."""
    for key in ("state_dict", "model", "module", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitkitError(f"{path}: not a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _read_npz(path: Path) -> StateDict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32).copy()) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise VitkitError(f"{path}: unreadable .npz ({e})") from e


def read_json(path: Path) -> dict:
    """A JSON object (config files are objects: a list or a number there is a broken file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VitkitError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise VitkitError(f"{path}: expected a JSON object {{...}}, found a {type(data).__name__}")
    return data
