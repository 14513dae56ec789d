"""What a newcomer meets first: defaults that fit the data, timm's layer contracts, one-line errors."""
import errno
import os

import pytest
import torch

import vitkit
from vitkit.data import load_dataset
from vitkit.errors import VitkitError
from vitkit.explain import mean_attention_distance
from vitkit.models import PatchEmbed
from vitkit.train import TrainConfig, Trainer, train
from vitkit.train.config import AUTO_STEPS, auto_batch_size

from test_train import digits_config


@pytest.mark.parametrize("images, batch", [(100, 32), (1_437, 32), (6_400, 128), (54_000, 256), (1_281_167, 256)])
def test_the_batch_gives_about_fifty_steps_an_epoch(images, batch):
    assert auto_batch_size(images) == batch


def test_epochs_left_to_vitkit_give_enough_optimiser_steps():
    small = TrainConfig().auto_schedule(1_437)  # scikit-learn's digits: 44 steps an epoch
    assert small.batch_size == 32 and small.epochs * (1_437 // 32) >= AUTO_STEPS
    big = TrainConfig().auto_schedule(54_000)
    assert (big.batch_size, big.epochs) == (256, 10)
    tiny = TrainConfig().auto_schedule(40)
    assert tiny.epochs == 200  # capped
    given = TrainConfig(batch_size=64, epochs=3).auto_schedule(1_437)
    assert (given.batch_size, given.epochs) == (64, 3)  # what the user says stands


def test_flips_follow_the_dataset(tmp_path):
    assert not load_dataset("digits", "train").flip_invariant  # a mirrored 7 is no digit
    trainer = Trainer(TrainConfig(model="vit_mini_patch4_28", dataset="digits", output=str(tmp_path), img_size=16,
                                  model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}, precision="fp32"))
    assert trainer.cfg.hflip is False and trainer.augment.hflip is False
    assert (trainer.cfg.batch_size, trainer.cfg.epochs) == (32, 14)  # decided, and recorded for a resume


def test_a_folder_declares_whether_a_mirror_changes_its_class(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / cls / f"{i}.png")
    assert load_dataset(f"folder:{tmp_path}", "train", img_size=8).flip_invariant
    (tmp_path / "dataset.yaml").write_text("flip_invariant: false\n")
    assert not load_dataset(f"folder:{tmp_path}", "train", img_size=8).flip_invariant
    (tmp_path / "dataset.yaml").write_text("flip: no\n")
    with pytest.raises(VitkitError, match="dataset.yaml: unknown property 'flip'"):
        load_dataset(f"folder:{tmp_path}", "train", img_size=8)


def test_a_run_of_too_few_steps_says_so(tmp_path, capsys):
    Trainer(digits_config(tmp_path, batch_size=256, epochs=2))
    assert "only 10 optimiser steps" in capsys.readouterr().err


def test_the_default_model_is_the_demos_pure_vit():
    model = vitkit.create_model(TrainConfig().model)
    assert model.global_pool == "avg" and model.cls_token is None
    assert type(model.patch_embed).__name__ == "ShiftedPatchEmbed"


def test_patch_embed_returns_tokens_as_timms_does():
    """[B, N, D] by default, so code and hooks written for timm's PatchEmbed work; the grid on request."""
    pe = PatchEmbed(img_size=8, patch_size=4, in_chans=2, embed_dim=6)
    x = torch.randn(3, 2, 8, 8)
    conv = pe.proj(x)  # [B, D, 2, 2]
    torch.testing.assert_close(pe(x), conv.flatten(2).transpose(1, 2))
    pe.output_fmt = "NHWC"
    torch.testing.assert_close(pe(x), conv.permute(0, 2, 3, 1))
    pe.output_fmt = "NCHW"
    torch.testing.assert_close(pe(x), conv)
    seen = []
    model = vitkit.create_model("vit_mini_patch4_28")
    model.patch_embed.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    model(torch.randn(1, 1, 28, 28))
    assert seen == [(1, 7, 7, 128)]  # ViT asks its embedding for the grid, to place position embeddings


def test_mean_attention_distance_takes_one_batch_tensor():
    model = vitkit.create_model("vit_mini_patch4_28", depth=2).eval()
    x = torch.randn(3, 1, 28, 28)
    got = mean_attention_distance(model, x)
    assert got.shape == (2, 4)
    assert (got == mean_attention_distance(model, [x])).all()


def _full_disk_after(monkeypatch, writes: int) -> None:
    """The disk fills up after ``writes`` more files (every vitkit file is flushed with fsync)."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr("vitkit.fileio.os.fsync", fsync)


def test_a_full_disk_is_one_line_that_says_what_is_intact_and_how_to_go_on(tmp_path, monkeypatch):
    cfg = digits_config(tmp_path / "run", epochs=2)
    with monkeypatch.context() as m:
        _full_disk_after(m, writes=7)  # epoch 1's files, then epoch 2's first
        with pytest.raises(VitkitError) as info:
            train(cfg)
    message = str(info.value)
    assert "could not be written (No space left on device)" in message and "\n" not in message
    assert "epochs 1-1 are intact" in message and f"vitkit train --resume {tmp_path / 'run'}" in message
    assert isinstance(info.value.__cause__, Exception)  # the OS's error stays chained
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written file left behind
    resumed = train(cfg, resume=True)
    straight = train(digits_config(tmp_path / "straight", epochs=2))
    assert resumed["top1"] == straight["top1"]


def test_the_cli_prints_a_full_disk_as_one_error_line(tmp_path, monkeypatch, capsys):
    from vitkit.cli import main
    _full_disk_after(monkeypatch, writes=0)
    code = main(["train", "--dataset", "digits", "--model", "vit_mini_patch4_28", "--img-size", "16", "--epochs", "1",
                 "--set", "model_kwargs={embed_dim: 32, depth: 1, num_heads: 2}", "--precision", "fp32",
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        ln for ln in err.splitlines() if "could not be written" in ln]
    assert "no epoch was finished" in err
