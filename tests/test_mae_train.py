"""MAE pretraining runs (vitkit pretrain), fine-tuning and probing them; few-label subsets, validation carved
from the training images and step budgets, which the few-labels study relies on."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.data.subset import balanced_indices, labelled_subset, split_validation
from vitkit.errors import VitkitError
from vitkit.models import VisionTransformer
from vitkit.train import TrainConfig, train

# An MAE small enough to pretrain on scikit-learn digits (8x8 upsampled to 16x16) in seconds.
TINY_MAE = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)


def pretrain_config(out, **kw) -> TrainConfig:
    base = dict(objective="mae", model="mae_vit_mini_patch4_28", dataset="digits", output=str(out), epochs=2,
                batch_size=64, lr=2e-3, warmup_epochs=0.5, precision="fp32", model_kwargs=TINY_MAE, crop_padding=0,
                hflip=False)
    return TrainConfig.from_dict({**base, **kw})


@pytest.mark.slow
def test_pretraining_lowers_the_reconstruction_loss_and_finetunes_from_the_run(tmp_path, capsys):
    report = train(pretrain_config(tmp_path / "mae", epochs=3))
    rows = [json.loads(line) for line in (tmp_path / "mae/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] and "eval_top1" not in rows[0]
    assert report["reconstruction_loss"] == pytest.approx(rows[-1]["eval_loss"], rel=0.2)
    for name in ("curves.png", "reconstructions.png", "best/model.safetensors", "train_state.pt"):
        assert (tmp_path / "mae" / name).is_file(), name
    # the run folder is what `vitkit finetune --checkpoint` takes
    assert main(["finetune", "--checkpoint", str(tmp_path / "mae"), "--dataset", "digits", "--output",
                 str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "32", "--labels-per-class", "5",
                 "--layer-decay", "0.75", "--precision", "fp32", "--set", "crop_padding=0"]) == 0
    tuned = vitkit.create_model(checkpoint=tmp_path / "ft")
    assert type(tuned) is VisionTransformer and tuned.global_pool == "avg" and tuned.num_classes == 10
    mae = vitkit.create_model(checkpoint=tmp_path / "mae")
    encoder = {k: v.shape for k, v in mae.state_dict().items() if k.startswith(("patch_embed", "blocks"))}
    assert {k: v.shape for k, v in tuned.state_dict().items() if k in encoder} == encoder  # the encoder, no decoder
    assert not any(k.startswith("decoder") for k in tuned.state_dict())
    assert json.loads((tmp_path / "ft/eval.json").read_text())["split"] == "test"
    # `vitkit explain` on the MAE run: its reconstructions, in the PNG and inlined in the report
    assert main(["explain", "--checkpoint", str(tmp_path / "mae"), "--out", str(tmp_path / "x")]) == 0
    drawn = Image.open(tmp_path / "x/reconstructions.png")
    assert drawn.height > drawn.width / 2  # 8 rows of four panels
    report = (tmp_path / "x/report.html").read_text()
    assert "Reconstructions" in report and report.count("data:image/png;base64") == 3
    assert main(["explain", "--checkpoint", str(tmp_path / "mae"), "--out", str(tmp_path / "x"), "--figure",
                 "attention-distance"]) == 2
    assert "explained by its reconstructions" in capsys.readouterr().err


@pytest.mark.slow
def test_a_linear_probe_trains_only_a_batchnormed_head_on_the_class_token(tmp_path):
    train(pretrain_config(tmp_path / "mae", epochs=1))
    before = vitkit.create_model(checkpoint=tmp_path / "mae").state_dict()
    train(TrainConfig.from_dict(dict(init_from=str(tmp_path / "mae"), linear_probe=True, dataset="digits",
                                     output=str(tmp_path / "probe"), epochs=1, batch_size=32, precision="fp32",
                                     crop_padding=0, drop_path_rate=0.0)))
    probe = vitkit.create_model(checkpoint=tmp_path / "probe")
    assert probe.global_pool == "token" and isinstance(probe.head[0], torch.nn.BatchNorm1d)
    assert not probe.head[0].affine and probe.head[0].num_batches_tracked > 0
    assert torch.equal(probe.state_dict()["blocks.1.mlp.fc2.weight"], before["blocks.1.mlp.fc2.weight"])  # frozen


def test_pretraining_reads_a_folder_without_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos/sub").mkdir(parents=True)
    for i in range(40):
        folder = tmp_path / "photos" / ("sub" if i % 2 else "")
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    train_ds = load_dataset(f"folder:{tmp_path / 'photos'}", "train", img_size=16, in_chans=1, unlabeled=True)
    val_ds = load_dataset(f"folder:{tmp_path / 'photos'}", "val", img_size=16, in_chans=1, unlabeled=True)
    assert len(train_ds) + len(val_ds) == 40 and train_ds.classes == ["image"]
    with pytest.raises(VitkitError, match="class folders"):  # a classifier still needs them
        load_dataset(f"folder:{tmp_path / 'photos'}", "train")
    report = train(pretrain_config(tmp_path / "run", dataset=f"folder:{tmp_path / 'photos'}", batch_size=8,
                                   epochs=1, model_kwargs={**TINY_MAE, "in_chans": 1}))
    assert report["images"] == len(train_ds)


def test_mae_runs_refuse_what_needs_labels():
    with pytest.raises(VitkitError, match="mixup"):
        TrainConfig.from_dict(dict(objective="mae", mixup=0.8))
    with pytest.raises(VitkitError, match="leak masked patches"):
        train(pretrain_config("/tmp/unused-mae-run", model="sl_vit_mini_patch4_28", model_kwargs={}))


def test_labels_per_class_is_a_seeded_class_balanced_draw():
    ds = load_dataset("digits", "train")
    few = labelled_subset(ds, 10, seed=0)
    assert torch.bincount(few.targets, minlength=10).tolist() == [10] * 10
    assert torch.equal(labelled_subset(ds, 10, seed=0).targets, few.targets)
    assert not torch.equal(balanced_indices(ds.targets, 10, 10, 0), balanced_indices(ds.targets, 10, 10, 1))
    share = labelled_subset(ds, 0.1, seed=0)
    assert abs(len(share) - 0.1 * len(ds)) <= 10
    with pytest.raises(VitkitError, match="only"):
        labelled_subset(ds, 1000, seed=0)


def test_validation_from_train_is_a_fixed_disjoint_class_balanced_share():
    ds = load_dataset("digits", "train")
    rest, val = split_validation(ds, 0.2)
    assert len(rest) + len(val) == len(ds)
    per_class = torch.bincount(val.targets, minlength=10)
    assert (per_class == (torch.bincount(ds.targets, minlength=10) * 0.2).floor()).all()
    pixels = {bytes(im.numpy()) for im in rest.images}
    assert sum(bytes(im.numpy()) in pixels for im in val.images) <= 2  # digits repeats a few images verbatim
    assert torch.equal(split_validation(ds, 0.2)[1].images, val.images)  # the same draw every time, whatever the seed
    with pytest.raises(VitkitError, match="leaves no training images"):
        split_validation(labelled_subset(ds, 1, seed=0), 1)


def test_a_run_validates_on_its_share_of_train_and_reports_the_test_split(tmp_path, capsys):
    cfg = TrainConfig.from_dict(dict(model="vit_mini_patch4_28", dataset="digits", output=str(tmp_path / "run"),
                                     epochs=1, batch_size=64, precision="fp32", val_from_train=0.1,
                                     model_kwargs=dict(depth=1, embed_dim=32, num_heads=2), img_size=8))
    train(cfg)
    rest, val = split_validation(load_dataset("digits", "train"), 0.1)
    assert f"on digits: {len(rest)} images" in capsys.readouterr().err
    report = json.loads((tmp_path / "run/eval.json").read_text())
    assert report["split"] == "test" and report["num_samples"] == len(load_dataset("digits", "test"))
    first_epoch = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert round(first_epoch["eval_top1"] * len(val)) == pytest.approx(first_epoch["eval_top1"] * len(val), abs=1e-6)
    with pytest.raises(VitkitError, match="val_from_train must be positive"):
        TrainConfig.from_dict(dict(val_from_train=0))


def test_steps_budget_the_work_whatever_the_dataset_size(tmp_path, capsys):
    cfg = TrainConfig.from_dict(dict(model="vit_mini_patch4_28", dataset="digits", output=str(tmp_path / "run"),
                                     steps=7, batch_size=500, precision="fp32", img_size=8, warmup_epochs=0,
                                     model_kwargs=dict(depth=1, embed_dim=32, num_heads=2)))
    assert cfg.auto_schedule(1437).epochs == 4 and cfg.auto_schedule(1437).total_steps(1437) == 7
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 7]  # 2 batches an epoch; the fourth stops after one
    assert rows[-1]["lr"] < 0.1 * rows[0]["lr"]  # the cosine schedule spans the 7 steps, not 4 whole epochs (8)
    assert "outlasts" not in capsys.readouterr().err
    train(dataclasses.replace(cfg, warmup_epochs=4.0), overwrite=True)
    assert "the warmup (4 epochs, 8 steps) outlasts the run's 7 steps" in capsys.readouterr().err
