"""Opening one image file as an 8-bit "L" or "RGB" picture, whatever its format or mode.

Every problem a user's file can have (missing, not an image, truncated, a decompression
bomb, an exotic mode) becomes a one-line ``VitkitError`` naming the file, so a bad image is
reported as such instead of surfacing as a PIL traceback in the middle of training.
"""
from __future__ import annotations

import functools
import io
import os
import re
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import VitkitError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif",
                                     ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico")


def env_int(name: str, default: int) -> int:
    """A whole number from the environment; anything else is the user's typo, named."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise VitkitError(f"{name} must be a whole number, got {text!r}") from None


MAX_IMAGE_PIXELS: int | None = None
"""Images with more pixels are refused (decompression bombs); None: $VITKIT_MAX_IMAGE_PIXELS, else 100 MP.
(Read when an image is opened, not at import, so a typo there is an error the CLI can name.)"""


def max_image_pixels() -> int:
    return MAX_IMAGE_PIXELS or _env_max_image_pixels()


@functools.cache  # once per process, not once per image (a failed read is not cached: it raises again)
def _env_max_image_pixels() -> int:
    limit = env_int("VITKIT_MAX_IMAGE_PIXELS", 100_000_000)
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # a user who raised vitkit's limit means Pillow's too
    return limit

WHITE = (255, 255, 255)


def open_image(path: str | os.PathLike, in_chans: int, *, max_pixels: int | None = None,
               draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully into mode "L" (``in_chans=1``) or "RGB" (``in_chans=3``).

    The whole file is decoded here (``.load()``) so truncation shows up now, with the file
    named. EXIF orientation is applied because cameras store portraits rotated.
    ``draft_size`` lets JPEG decode at a reduced scale that is still at least that many pixels
    per side, which makes decoding big photos for small models several times faster.
    """
    _check_chans(in_chans)
    path = Path(path)
    return _decode(open_header(path, max_pixels), path, in_chans, draft_size)


def image_from_bytes(data: bytes, name: str, in_chans: int, *, max_pixels: int | None = None,
                     draft_size: int | None = None) -> Image.Image:
    """:func:`open_image` for bytes in memory (an upload); errors name the image ``name``."""
    _check_chans(in_chans)
    if not data:
        raise VitkitError(f"{name}: the image is empty (0 bytes)")
    return _decode(_header(io.BytesIO(data), name, max_pixels), name, in_chans, draft_size)


def open_header(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` reading only its header: catches missing, empty, unknown, zero-size and
    oversized files cheaply, before any pixel is decoded."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "a device or pipe" if path.exists() else "no such file"
        raise VitkitError(f"{path}: not an image file ({what})")
    if path.stat().st_size == 0:
        raise VitkitError(f"{path}: the file is empty (0 bytes)")
    return _header(path, path, max_pixels)


def _check_chans(in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise VitkitError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")


def _header(source: Path | IO[bytes], name: str | Path, max_pixels: int | None) -> Image.Image:
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except UnidentifiedImageError:
        ext = Path(str(name)).suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            raise VitkitError(f"{name}: unreadable image data (corrupt, truncated, or not really a {ext} file)") \
                from None
        raise VitkitError(f"{name}: not an image format Pillow can read (extension {ext or 'none'})") from None
    except Image.DecompressionBombError as e:  # beyond twice Pillow's own limit, before our check
        size = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's message: "Image size (N pixels) exceeds ..."
        said = f"{int(size[1]):,} pixels" if size else f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        raise _too_large(name, f"{said}, limit {limit:,}") from e
    except Exception as e:  # noqa: BLE001 - a damaged header can raise almost anything
        raise VitkitError(f"{name}: corrupt image header ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w == 0 or h == 0:
        raise VitkitError(f"{name}: image has zero size ({w}x{h})")
    if w * h > limit:
        raise _too_large(name, f"{w}x{h} = {w * h:,} pixels, limit {limit:,}")
    return im


def _decode(im: Image.Image, name: str | Path, in_chans: int, draft_size: int | None) -> Image.Image:
    try:
        if draft_size and im.format == "JPEG":
            im.draft("L" if in_chans == 1 else "RGB", (draft_size, draft_size))
        im.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise VitkitError(f"{name}: truncated or corrupt image ({type(e).__name__}: {e})") from e
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose an otherwise good picture
        pass
    try:
        return _to_mode(im, "L" if in_chans == 1 else "RGB")
    except ValueError as e:
        raise VitkitError(f"{name}: cannot convert image mode {im.mode} to 8-bit ({e})") from e


def _too_large(name: str | Path, detail: str) -> VitkitError:
    return VitkitError(f"{name}: image is too large ({detail}); refusing a possible decompression bomb "
                       "(raise VITKIT_MAX_IMAGE_PIXELS if the image is genuine)")


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Transparent pixels become white (dropping alpha would expose arbitrary colours); high
    bit-depth images are scaled to 8 bits rather than clipped, which would saturate them."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _high_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, WHITE + (255,)), rgba).convert("RGB")
    return im if im.mode == mode else im.convert(mode)


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit modes map 0..65535 to 0..255 (divide by 257). 32-bit "I" is taken as 16-bit data
    when it fits (that is what 16-bit PNG/TIFF usually decode to), and "F" in [0, 1] is scaled
    by 255; any other range is stretched from min(0, min) to max, keeping zero black when it can.
    The 16-bit case stays in integers: a 100-MP scan would need GBs as float64."""
    a = np.asarray(im)
    if a.dtype.kind == "f" and not np.isfinite(a).all():  # min/max would be NaN: an all-black image
        raise ValueError(f"{int((~np.isfinite(a)).sum()):,} pixel(s) are NaN or infinite")
    lo, hi = (min(float(a.min()), 0.0), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        b = a.astype(np.uint32)
        b += 128
        b //= 257  # round(a / 257), in place
        return Image.fromarray(b.astype(np.uint8))
    a = a.astype(np.float32)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        a *= 255.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def image_to_tensor(im: Image.Image) -> torch.Tensor:
    """uint8 [C,H,W] tensor from an "L" or "RGB" image."""
    a = np.array(im, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))
