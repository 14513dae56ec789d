"""Atomic file writes: a killed job leaves the old file or the new one, never a torn one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import VitkitError


class WriteError(VitkitError):
    """A file could not be written: the disk is full, the folder read-only or not the user's. The old
    file, if any, is intact (see :func:`atomic_write`)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: could not be written ({reason})")
        self.path = path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path``.

    The operating system's refusals (a full disk, a read-only or foreign folder) become a
    :class:`WriteError` naming the file, whichever library did the writing."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        # mkstemp makes 0600, and so does safetensors' save_file: a checkpoint should be as readable as any file
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e.strerror or str(e)) from e
    except Exception as e:
        if type(e).__name__ != "SafetensorError" or "Os {" not in str(e):  # safetensors' own I/O errors
            raise
        raise WriteError(path, str(e).split('message: "')[-1].split('"')[0]) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure as a PNG, written atomically, then closed (figures hold memory until closed)."""
    import matplotlib.pyplot as plt
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, **savefig_kwargs))
    finally:
        plt.close(fig)


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
