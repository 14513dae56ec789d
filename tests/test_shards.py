"""WebDataset shards: written from a dataset, read back image for image, and trained on as the in-memory data."""
import json
import tarfile

import pytest
import torch

from vitkit.cli import main
from vitkit.data import load_dataset, make_loader
from vitkit.errors import VitkitError
from vitkit.train import TrainConfig, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["shards", "--dataset", "digits", "--out", str(out), "--shard-size", "500"]) == 0
    return out


def test_shards_hold_every_image_and_label_in_webdataset_layout(shards):
    info = json.loads((shards / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == len(load_dataset("digits", "train"))
    with tarfile.open(shards / info["splits"]["train"]["filenames"][0]) as tar:
        names = tar.getnames()
    assert names[:2] == ["000000000.png", "000000000.cls"]  # timm/OpenCLIP's KEY.png + KEY.cls
    for split in ("train", "test"):
        memory, streamed = load_dataset("digits", split), load_dataset(f"shards:{shards}", split)
        assert streamed.classes == memory.classes and streamed.mean == memory.mean
        assert torch.equal(streamed.targets, memory.targets)
        for i in (0, 1, len(memory) - 1):  # lossless PNG: the same pixels
            assert torch.equal(streamed[i][0], memory[i][0])


def test_a_missing_split_is_named(shards):
    with pytest.raises(VitkitError, match="no all shards"):
        load_dataset(f"shards:{shards}", "all")


@pytest.mark.slow
def test_training_on_shards_equals_training_in_memory(shards, tmp_path):
    """The same images in the same order: the same run, through DataLoader workers instead of tensors."""
    base = dict(model="vit_mini_patch4_28", epochs=1, batch_size=64, precision="fp32", workers=1,
                model_kwargs=dict(img_size=8, patch_size=4, embed_dim=32, depth=1, num_heads=2), device="cpu")
    one = train(TrainConfig.from_dict({**base, "dataset": "digits", "output": str(tmp_path / "m")}))
    two = train(TrainConfig.from_dict({**base, "dataset": f"shards:{shards}", "output": str(tmp_path / "s")}))
    assert two["top1"] == pytest.approx(one["top1"], abs=1e-9) and two["loss"] == pytest.approx(one["loss"], 1e-5)
    loader = make_loader(load_dataset(f"shards:{shards}", "train"), 32, shuffle=True, num_workers=1)
    assert len(loader) == len(make_loader(load_dataset("digits", "train"), 32, shuffle=True))
