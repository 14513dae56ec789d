"""Datasets, folder layouts and their errors, loaders and batch transforms."""
import shutil
import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitkit.data import (DATASET_STATS, InMemoryDataset, LazyImageDataset, load_dataset, make_loader, normalize,
                         random_crop_flip)
from vitkit.data import fashion_mnist
from vitkit.errors import VitkitError


# ---------------------------------------------------------------- Fashion-MNIST

def _fashion_test_copy(tmp_path):
    for f in fashion_mnist.FILES["test"]:
        shutil.copy(fashion_mnist.SYSTEM_DIR / f.name, tmp_path / f.name)
    return tmp_path


needs_fashion = pytest.mark.skipif(not (fashion_mnist.SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                                   reason="apt-get install dataset-fashion-mnist")


@needs_fashion
def test_fashion_mnist_loads_and_verifies():
    t = time.perf_counter()
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert time.perf_counter() - t < 5  # ~1 s cold, ~0.2 s cached
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert train.targets.bincount().tolist() == [6000] * 10 and test.targets.bincount().tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and len(train.classes) == 10
    x = train.images.float() / 255
    assert abs(x.mean() - train.mean[0]) < 5e-4 and abs(x.std() - train.std[0]) < 5e-4
    assert (train.mean, train.std) == DATASET_STATS["fashion-mnist"]
    img, label = train[0]
    assert img.shape == (1, 28, 28) and label == 9  # the first training image is an ankle boot


@needs_fashion
def test_fashion_mnist_resized_rgb():
    ds = load_dataset("fashion-mnist", "test", img_size=32, in_chans=3)
    assert ds.images.shape == (10000, 3, 32, 32) and len(ds.mean) == 3 and len(ds.std) == 3
    assert torch.equal(ds.images[:5, 0], ds.images[:5, 2])


@needs_fashion
def test_fashion_mnist_corrupt_byte_is_a_checksum_error(tmp_path):
    d = _fashion_test_copy(tmp_path)
    labels = d / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[len(data) // 2] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(VitkitError) as e:
        load_dataset("fashion-mnist", "test", data_dir=d, download=False)
    msg = str(e.value)
    assert str(labels) in msg and ("checksum mismatch" in msg or "truncated or not a gzip" in msg)


@needs_fashion
def test_fashion_mnist_payload_checksum_names_both_hashes(tmp_path):
    d = _fashion_test_copy(tmp_path)
    labels = d / "t10k-labels-idx1-ubyte.gz"
    import gzip
    payload = bytearray(gzip.decompress(labels.read_bytes()))
    payload[-1] = (payload[-1] + 1) % 10  # a valid gzip of a changed label
    labels.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(VitkitError, match=r"checksum mismatch.*bb300cfdad3c16e7a12a480ee83cd310.*"
                                          r"15d484375f8d13e6eb1aabb0c3f46965") as e:
        load_dataset("fashion-mnist", "test", data_dir=d, download=False)
    assert str(labels) in str(e.value)


@needs_fashion
def test_fashion_mnist_truncated_gz(tmp_path):
    d = _fashion_test_copy(tmp_path)
    images = d / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100_000])
    with pytest.raises(VitkitError, match="truncated or not a gzip file") as e:
        load_dataset("fashion-mnist", "test", data_dir=d, download=False)
    assert str(images) in str(e.value)


def test_fashion_mnist_missing_without_download(tmp_path):
    with pytest.raises(VitkitError, match=r"t10k-images-idx3-ubyte.gz not found in .*apt-get install "
                                          r"dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path, download=False)


@needs_fashion
def test_fashion_mnist_download_falls_back_and_renames_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [f"file://{tmp_path}/offline/",
                                                   f"file://{fashion_mnist.SYSTEM_DIR}/"])
    ds = load_dataset("fashion-mnist", "test", data_dir=tmp_path / "dl")
    assert len(ds) == 10000
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                                  "t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [f"file://{tmp_path}/offline/"])
    with pytest.raises(VitkitError, match="could not be downloaded.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "dl2")
    assert not (tmp_path / "dl2").exists()  # nothing to write: no folder made either


# ---------------------------------------------------------------- digits

def test_digits_split_is_a_stratified_partition():
    from sklearn.datasets import load_digits
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    full = load_digits()
    everything = Counter((np.rint(im * 255 / 16).astype(np.uint8).tobytes(), int(t))
                         for im, t in zip(full.images, full.target))
    split = Counter((im[0].numpy().tobytes(), int(t)) for ds in (train, test) for im, t in zip(ds.images, ds.targets))
    assert split == everything  # no image in both, none lost (the 1797 images are all distinct)
    ratio = test.targets.bincount().float() / train.targets.bincount().float()
    assert (ratio - 0.25).abs().max() < 0.02
    big = load_dataset("digits", "val", img_size=16, in_chans=3)
    assert big.images.shape == (360, 3, 16, 16) and torch.equal(big.targets, test.targets)


def test_unknown_dataset_and_split():
    with pytest.raises(VitkitError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "train")
    with pytest.raises(VitkitError, match="unknown split 'dev'"):
        load_dataset("digits", "dev")


# ---------------------------------------------------------------- image folders

def _class_folders(root, n_per_class=5, classes=("cat", "dog")):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (12 + i, 10), (40 * c + i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_folder_modes_and_values(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / "a" / "deep.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(root / "a" / "clear.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "a" / "cmyk.jpg")
    Image.new("L", (8, 8), 90).save(root / "b" / "gray.jpg", quality=95)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
    pal.save(root / "b" / "pal.gif")
    (root / "b" / ".DS_Store").write_bytes(b"\0junk")
    (root / "b" / "Thumbs.db").write_bytes(b"\0junk")
    (root / "README.txt").write_text("files beside the class folders are not images of a class")
    ds = load_dataset(f"folder:{root}", "train", img_size=4, in_chans=3, val_fraction=0.0)
    assert isinstance(ds, InMemoryDataset) and ds.classes == ["a", "b"]
    assert ds.images.shape == (5, 3, 4, 4) and ds.targets.tolist() == [0, 0, 0, 1, 1]
    px = {i: tuple(ds.images[i, :, 2, 2].tolist()) for i in range(5)}  # sorted: clear, cmyk, deep, gray, pal
    assert px[0] == (255, 255, 255) and px[2] == (255, 255, 255) and px[4] == (0, 0, 200)
    assert px[1][0] > 240 and px[1][1] < 15 and abs(px[3][0] - 90) <= 2
    gray = load_dataset(f"folder:{root}", "train", img_size=4, in_chans=1, val_fraction=0.0)
    assert gray.images.shape == (5, 1, 4, 4) and gray.mean == (pytest.approx(0.449, abs=1e-3),)


def test_folder_resize_keeps_aspect_by_center_crop(tmp_path):
    root = tmp_path / "ds"
    (root / "x").mkdir(parents=True)
    a = np.zeros((20, 40), np.uint8)
    a[:, 10:30] = 255  # the central square is white, the side strips black
    Image.fromarray(a).save(root / "x" / "wide.png")
    ds = load_dataset(f"folder:{root}", "train", img_size=10, in_chans=1, val_fraction=0.0)
    assert ds.images.shape == (1, 1, 10, 10) and int(ds.images.min()) >= 200  # squashing would show black


def test_folder_stratified_split_is_deterministic(tmp_path):
    root = _class_folders(tmp_path / "ds", n_per_class=10)
    spec = f"folder:{root}"
    tr, va = load_dataset(spec, "train", img_size=8), load_dataset(spec, "val", img_size=8, val_fraction=0.1)
    assert tr.targets.bincount().tolist() == [9, 9] and va.targets.bincount().tolist() == [1, 1]
    assert isinstance(tr, InMemoryDataset) and tr.images.shape == (18, 3, 8, 8)
    # the red channel encodes class and index, so equal pixels mean equal files
    tr_keys, va_keys = set(tr.images[:, 0, 4, 4].tolist()), set(va.images[:, 0, 4, 4].tolist())
    assert not tr_keys & va_keys and len(tr_keys | va_keys) == 20
    again = load_dataset(spec, "val", img_size=8)
    other = load_dataset(spec, "val", img_size=8, seed=1)
    assert torch.equal(again.images, va.images)
    assert not torch.equal(other.images, va.images)  # 1 in 100 chance of equality: fixed seeds, checked


def test_a_builtin_dataset_at_another_size_is_what_predict_makes_of_its_files(tmp_path):
    """Training and eval resize digits 8 -> 28 exactly as predict and serve resize an 8-px file."""
    from vitkit.data import load_resized
    small, big = load_dataset("digits", "test"), load_dataset("digits", "test", img_size=28)
    for i in range(5):
        Image.fromarray(small.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
        assert torch.equal(load_resized(tmp_path / f"{i}.png", 28, 1), big.images[i])

def test_images_added_later_barely_move_the_folder_split(tmp_path):
    """eval and --resume reload the folder: new files must not reshuffle which images were held out."""
    from vitkit.data import folder
    root = tmp_path / "ds"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(40):
            (root / name / f"{i}.png").write_bytes(b"")  # the split is made before any image is decoded

    def held_out() -> set[str]:
        classes, samples, _ = folder._scan(root)
        return {p.name + p.parent.name for p, _ in folder._stratified_part(samples, 2, 0.25, 0, True, root)}

    before = held_out()
    for i in range(40, 44):
        (root / "cat" / f"{i}.png").write_bytes(b"")
    after = held_out()
    assert len(before) == 20 and len(after) == 21  # round(44 / 4) = 11 cats, 10 dogs
    assert len(before - after) <= 4 and {n for n in before if n.endswith("dog")} <= after

def test_linked_folders_are_followed_once_by_datasets_and_predict(tmp_path):
    from vitkit.inference.predict import expand_inputs
    root = _class_folders(tmp_path / "ds", n_per_class=2)
    _class_folders(tmp_path / "more", n_per_class=3)
    (root / "cat" / "linked").symlink_to(tmp_path / "more" / "cat", target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)  # must not recurse for ever
    assert load_dataset(f"folder:{root}", "train", img_size=8, val_fraction=0.0).targets.bincount().tolist() == [5, 2]
    found = expand_inputs([root])
    assert len(found) == 7 and sum("linked" in p.parts for p in found) == 3


def test_folder_train_val_subfolders(tmp_path):
    root = tmp_path / "ds"
    _class_folders(root / "train", 3)
    _class_folders(root / "val", 2)
    assert len(load_dataset(f"folder:{root}", "train", img_size=8)) == 6
    assert len(load_dataset(f"folder:{root}", "test", img_size=8)) == 4
    shutil.rmtree(root / "val" / "dog")
    _class_folders(root / "val2", 1, classes=("bird",))
    shutil.move(root / "val2" / "bird", root / "val" / "bird")
    with pytest.raises(VitkitError, match=r"differ \(only in train/: dog; only in val/: bird\)"):
        load_dataset(f"folder:{root}", "val", img_size=8)


@pytest.mark.parametrize("breakage, message", [
    ("missing_root", "dataset folder does not exist"),
    ("no_classes", "no class folders found"),
    ("empty_class", "empty class folder"),
    ("unknown_ext", r"notes\.txt \(unknown image extension"),
])
def test_folder_layout_errors(tmp_path, breakage, message):
    root = tmp_path / "ds"
    if breakage != "missing_root":
        root.mkdir()
    if breakage in ("empty_class", "unknown_ext"):
        _class_folders(root, 2)
    if breakage == "empty_class":
        (root / "zebra").mkdir()
    if breakage == "unknown_ext":
        (root / "cat" / "notes.txt").write_text("x")
    with pytest.raises(VitkitError, match=message) as e:
        load_dataset(f"folder:{root}", "train", img_size=8)
    assert str(root) in str(e.value) and "\n" not in str(e.value)


def _broken_folder(tmp_path):
    root = _class_folders(tmp_path / "ds", 3)
    Image.effect_noise((64, 64), 60).save(root / "cat" / "1.png")
    (root / "cat" / "1.png").write_bytes((root / "cat" / "1.png").read_bytes()[:2000])  # cut in the pixel data
    (root / "dog" / "0.png").write_bytes(b"GIF89a this is garbage")  # corrupt
    return root, root / "cat" / "1.png", root / "dog" / "0.png"


def test_folder_bad_images_all_reported_before_training(tmp_path):
    root, truncated, corrupt = _broken_folder(tmp_path)
    with pytest.raises(VitkitError, match=r"2 of 6 images could not be read") as e:
        load_dataset(f"folder:{root}", "train", img_size=8, val_fraction=0.0)
    msg = str(e.value)
    assert f"{truncated}: truncated or corrupt" in msg and f"{corrupt}: unreadable image data" in msg
    assert "\n" not in msg


def test_folder_lists_layout_problems_and_bad_images_of_each_split_at_once(tmp_path):
    """A loose image (in no class), an unknown extension and a corrupt image: one run, one line per split."""
    root = tmp_path / "ds"
    _class_folders(root / "train", 3)
    _class_folders(root / "val", 2)
    Image.new("L", (8, 8)).save(root / "train" / "loose.png")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    (root / "val" / "dog" / "0.png").write_bytes(b"GIF89a this is garbage")
    with pytest.raises(VitkitError) as e:
        load_dataset(f"folder:{root}", "train", img_size=8)
    msg = str(e.value)
    assert msg.startswith(f"folder:{root}[train]: 2 problem(s) in the folder: ") and "could not be read" not in msg
    assert "loose.png (beside the class folders, in none" in msg and "notes.txt (unknown image extension" in msg
    with pytest.raises(VitkitError, match=r"\[val\]: 1 of 4 images could not be read: .*dog/0\.png: unreadable"):
        load_dataset(f"folder:{root}", "val", img_size=8)
    (root / "train" / "cat" / "0.png").write_bytes(b"")
    with pytest.raises(VitkitError, match=r"\[train\]: 2 problem\(s\) in the folder, 1 of 6 images could not be "
                                          r"read: .*notes\.txt.*loose\.png.*cat/0\.png"):
        load_dataset(f"folder:{root}", "train", img_size=8)
    (root / "loose.jpg").write_bytes((root / "train" / "loose.png").read_bytes())
    with pytest.raises(VitkitError, match=r"loose\.jpg sit\(s\) beside train/, val/"):
        load_dataset(f"folder:{root}", "train", img_size=8)


def test_folder_too_big_for_memory_checks_headers_then_names_bad_file_in_worker(tmp_path):
    from vitkit.data.folder import load_folder
    root, truncated, corrupt = _broken_folder(tmp_path)
    with pytest.raises(VitkitError, match=r"1 of 6 images could not be read: .*dog/0\.png: unreadable"):
        load_folder(root, "train", img_size=8, val_fraction=0.0, memory_budget_mb=0)
    corrupt.write_bytes((root / "cat" / "0.png").read_bytes())
    ds = load_folder(root, "train", img_size=8, val_fraction=0.0, memory_budget_mb=0)  # truncation needs decoding
    with pytest.raises(VitkitError) as e:
        list(make_loader(ds, 2, shuffle=False, num_workers=1))
    assert str(e.value).startswith(f"{truncated}: truncated or corrupt") and "\n" not in str(e.value)


def test_folder_decompression_bomb(tmp_path, monkeypatch):
    from vitkit.data import images
    root = _class_folders(tmp_path / "ds", 7)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 125)  # the images are 12x10 .. 18x10
    with pytest.raises(VitkitError, match=r"^folder:.*ds\[train\]: 12 of 14 images could not be read: .*cat/2\.png: image is too large "
                                          r"\(14x10 = 140 pixels, limit 125\).*decompression bomb.*; and 2 more$"):
        load_dataset(f"folder:{root}", "train", img_size=8, val_fraction=0.0)


def test_folder_lazy_dataset_through_workers(tmp_path):
    from vitkit.data.folder import load_folder
    root = _class_folders(tmp_path / "ds", 4)
    eager = load_folder(root, "train", img_size=8, val_fraction=0.0)
    lazy = load_folder(root, "train", img_size=8, val_fraction=0.0, memory_budget_mb=0)
    assert isinstance(lazy, LazyImageDataset) and len(lazy) == 8
    loader = make_loader(lazy, 3, shuffle=True, seed=5, num_workers=1)
    xs, ys = zip(*loader)
    assert len(loader) == 3 and [len(y) for y in ys] == [3, 3, 2]
    order = torch.cat(ys)
    ref_x, ref_y = zip(*make_loader(eager, 3, shuffle=True, seed=5))
    assert torch.equal(torch.cat(xs), torch.cat(ref_x)) and torch.equal(order, torch.cat(ref_y))


# ---------------------------------------------------------------- loaders

def _toy(n=10):
    return InMemoryDataset(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n),
                           [str(i) for i in range(n)], (0.5,), (0.5,), "toy")


def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = _toy(100)
    a = _order(make_loader(ds, 16, shuffle=True, seed=3, epoch=2))
    assert a == _order(make_loader(ds, 16, shuffle=True, seed=3, epoch=2))
    assert a != _order(make_loader(ds, 16, shuffle=True, seed=3, epoch=3))
    assert sorted(a) == list(range(100))
    assert _order(make_loader(ds, 16, shuffle=False)) == list(range(100))
    loader = make_loader(ds, 16, shuffle=True, seed=3, epoch=0)
    loader.sampler.set_epoch(2)
    assert _order(loader) == a
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and torch.equal(x.view(-1).long(), y)


@pytest.mark.parametrize("n, world, drop_last", [(100, 2, False), (101, 2, False), (101, 2, True), (10, 3, False)])
def test_loader_shards(n, world, drop_last):
    ds = _toy(n)
    shards = [_order(make_loader(ds, 8, shuffle=True, seed=1, epoch=4, rank=r, world_size=world,
                                 drop_last=drop_last)) for r in range(world)]
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1
    every = [i for s in shards for i in s]
    if drop_last:
        size = (n // world) // 8 * 8
        assert sizes == {size} and len(set(every)) == len(every)
    else:
        assert set(every) == set(range(n)) and len(every) - len(set(every)) == -n % world


def test_loader_batch_counts_and_drop_last():
    ds = _toy(10)
    loader = make_loader(ds, 4, shuffle=False)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]
    loader = make_loader(ds, 4, shuffle=False, drop_last=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]


@needs_fashion
def test_loader_speed_on_fashion_mnist():
    ds = load_dataset("fashion-mnist", "train")
    loader = make_loader(ds, 256, shuffle=True, seed=0, epoch=0)
    t = time.perf_counter()
    n = sum(1 for _ in loader)
    rate = n / (time.perf_counter() - t)
    print(f"fashion-mnist train, batch 256: {rate:.0f} batches/s")
    assert n == len(loader) == 235 and rate > 300


# ---------------------------------------------------------------- batch transforms

def test_normalize():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(2, 2, 3, 3)
    y = normalize(x, (0.5, 0.0), (0.5, 1.0))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y[:, 0], torch.tensor(-1.0)) and torch.allclose(y[:, 1], torch.tensor(1.0))


def test_random_crop_flip_identity_and_flip():
    x = torch.randint(0, 256, (6, 3, 7, 9), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, False), x)
    y = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(6)]
    assert all(flipped[i] or torch.equal(y[i], x[i]) for i in range(6)) and 0 < sum(flipped) < 6


@pytest.mark.parametrize("pad_mode, torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_random_crop_flip_matches_pad_then_crop(pad_mode, torch_mode):
    p, x = 3, torch.randint(1, 256, (16, 2, 6, 5), dtype=torch.uint8)
    y = random_crop_flip(x, p, True, torch.Generator().manual_seed(1), pad_mode=pad_mode)
    assert y.shape == x.shape and y.dtype == torch.uint8
    padded = F.pad(x.float(), (p, p, p, p), mode=torch_mode).to(torch.uint8)
    for i in range(16):  # each output is some crop of the padded image, maybe mirrored
        crops = [c for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 for c in (padded[i, :, dy:dy + 6, dx:dx + 5],)]
        assert any(torch.equal(y[i], c) or torch.equal(y[i], c.flip(-1)) for c in crops), i
    assert len({y[i].sum().item() for i in range(16)}) > 1
    again = random_crop_flip(x, p, True, torch.Generator().manual_seed(1), pad_mode=pad_mode)
    assert torch.equal(again, y)


@pytest.mark.parametrize("layout, message", [
    ({"val/cat": 2, "val/dog": 2, "test/cat": 2, "test/dog": 2}, r"has val/, test/ but no train/"),
    ({"train": 3, "val": 3}, r"train/, val/ hold\(s\) images, not class folders"),
    ({"train/cat": 2, "train/dog": 2, "val/cat": 2, "val/dog": 2, "bird": 2}, r"bird/ sit\(s\) beside train/, val/"),
])
def test_split_layouts_that_would_be_misread_are_refused(tmp_path, layout, message):
    for folder, n in layout.items():
        (tmp_path / "ds" / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 20 * i).save(tmp_path / "ds" / folder / f"{i}.png")
    with pytest.raises(VitkitError, match=message):
        load_dataset(f"folder:{tmp_path / 'ds'}", "train", img_size=8)


@pytest.mark.parametrize("folders", [("Train", "val"), ("train", "validation")])
def test_folders_named_like_splits_are_not_read_as_classes_or_ignored(tmp_path, folders):
    for name in folders:
        _class_folders(tmp_path / "ds" / name, 2)
    with pytest.raises(VitkitError, match=r"look\(s\) like a split; vitkit reads the splits train/, val/ and test/"):
        load_dataset(f"folder:{tmp_path / 'ds'}", "train", img_size=8)
