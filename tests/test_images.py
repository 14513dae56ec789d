"""open_image: every odd mode decodes to the right 8-bit values; every bad file gives a clear error."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vitkit.data import open_image
from vitkit.errors import VitkitError


def _save(path, im, **kw):
    im.save(path, **kw)
    return path


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 4), 3)
    im.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 0, 0] + [0] * 756)
    if transparent:
        im.info["transparency"] = 3
    return im


@pytest.mark.parametrize("name, make, in_chans, expected", [
    ("gray.png", lambda: Image.new("L", (4, 4), 77), 1, 77),
    ("gray.png", lambda: Image.new("L", (4, 4), 77), 3, (77, 77, 77)),
    ("rgb.jpg", lambda: Image.new("RGB", (8, 8), (0, 0, 255)), 1, 29),  # 601 luma of blue, JPEG-rounded
    ("transparent.png", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), 3, (255, 255, 255)),
    ("half.png", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 128)), 3, (127, 127, 127)),
    ("la.png", lambda: Image.new("LA", (4, 4), (0, 0)), 1, 255),
    ("palette.png", lambda: _palette_image(False), 3, (200, 0, 0)),
    ("palette_transparent.png", lambda: _palette_image(True), 3, (255, 255, 255)),
    ("bilevel.png", lambda: Image.new("1", (4, 4), 1), 1, 255),
    ("deep16.png", lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), 1, 255),
    ("mid16.png", lambda: Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)), 1, 100),
    ("big_endian16.tif", lambda: Image.fromarray(np.full((4, 4), 257 * 40, ">u2")), 1, 40),
    ("float.tif", lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), 1, 128),
    ("cmyk.jpg", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), 3, (255, 0, 0)),
    ("ycbcr.jpg", lambda: Image.new("YCbCr", (8, 8), (128, 128, 128)), 3, (128, 128, 128)),
])
def test_modes_decode_to_8bit(tmp_path, name, make, in_chans, expected):
    im = open_image(_save(tmp_path / name, make()), in_chans)
    assert im.mode == ("L" if in_chans == 1 else "RGB")
    got = im.getpixel((1, 1))
    if isinstance(expected, tuple):
        assert max(abs(g - e) for g, e in zip(got, expected)) <= 2, got
    else:
        assert abs(got - expected) <= 2, got


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "rot.jpg", Image.new("RGB", (40, 20)), exif=exif)
    assert open_image(path, 3).size == (20, 40)


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels but holds almost no data (how decompression bombs look)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, r"not an image file \(no such file\)"),
    (lambda p: p.mkdir(), r"not an image file \(a folder\)"),
    (lambda p: os.mkfifo(p), r"not an image file \(a device or pipe\)"),  # reading it would block for ever
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"hello, not a picture"), "unreadable image data"),
    (lambda p: p.write_bytes(_png_header(100_000, 100_000)), r"too large.*10,000,000,000 pixels"),
    (lambda p: p.write_bytes(_png_header(0, 10)), "unreadable image data"),  # Pillow refuses 0 x h
])
def test_bad_files_name_the_file(tmp_path, setup, message):
    path = tmp_path / "bad.png"
    setup(path)
    with pytest.raises(VitkitError, match=message) as e:
        open_image(path, 3)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_float_image_with_nan_or_inf_is_refused_not_blacked_out(tmp_path):
    import numpy as np
    for bad in (np.nan, np.inf):
        a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
        a[0, 0] = bad
        path = _save(tmp_path / "f.tif", Image.fromarray(a))
        with pytest.raises(VitkitError, match=r"f\.tif: .*1 pixel\(s\) are NaN or infinite"):
            open_image(path, 1)


def test_truncated_and_bomb_limits(tmp_path):
    good = _save(tmp_path / "good.png", Image.effect_noise((64, 64), 50).convert("L"))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(VitkitError, match=r"cut\.png: truncated or corrupt"):
        open_image(cut, 1)
    with pytest.raises(VitkitError, match=r"64x64 = 4,096 pixels, limit 1,000"):
        open_image(good, 1, max_pixels=1000)
    (tmp_path / "notes.xyz").write_text("x")
    with pytest.raises(VitkitError, match=r"extension \.xyz"):
        open_image(tmp_path / "notes.xyz", 1)


def test_a_thin_strip_is_cropped_before_it_is_resized(monkeypatch):
    """A 300000x1 image (a few hundred bytes as PNG) must not become a 300000*224-pixel intermediate."""
    from vitkit.data import resize_center_crop
    sizes, real = [], Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(size)
        return real(self, size, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", resize)
    out = resize_center_crop(Image.new("L", (300_000, 1), 128), 224)
    assert out.size == (224, 224) and np.asarray(out).min() == 128
    assert max(w * h for w, h in sizes) <= 224 * 224
