"""Training engine: learning, resume == uninterrupted, checkpoints, schedule, parameter groups."""
import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint, train

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
from vitkit.train.optim import cosine_lr, param_groups

# A ViT small enough to train on scikit-learn digits (8x8 upsampled to 16x16) in seconds.
DIGITS_MODEL = dict(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def digits_config(out: Path, **kw) -> TrainConfig:
    base = dict(model="vit_mini_patch4_28", dataset="digits", output=str(out), epochs=3, batch_size=32, lr=3e-3,
                warmup_epochs=0.5, precision="fp32", model_kwargs=DIGITS_MODEL, drop_path_rate=0.0, log_every=5,
                hflip=False, crop_padding=0, label_smoothing=0.0)
    return TrainConfig.from_dict({**base, **kw})


def test_training_on_digits_learns(tmp_path):
    report = train(digits_config(tmp_path, epochs=8))
    assert report["top1"] > 0.75  # chance is 0.10
    assert report["train_seconds"] > 0 and report["cpu"]  # a time means little without the CPU that took it
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["top1"] == report["top1"] and len(saved["per_class"]) == 10
    for name in ["model.safetensors", "config.json", "train_state.pt", "metrics.jsonl", "curves.png",
                 "confusion.png", "best/model.safetensors"]:
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporaries"


class Killed(Exception):
    pass


DEIT_OPTIONS = dict(ema_decay=0.9, mixup=0.8, cutmix=1.0, repeated_aug=2, randaugment="rand-m9-mstd0.5-inc1",
                   reprob=0.25, crop_padding=1, label_smoothing=0.1)


CACHED_TEACHER_OPTIONS = dict(distill="soft", distill_tau=2.0, distill_cache=True, crop_padding=1, hflip=True)


@pytest.mark.parametrize("options", [{}, DEIT_OPTIONS, CACHED_TEACHER_OPTIONS],
                         ids=["plain", "deit-recipe-with-ema", "cached-teacher"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, options):
    if options.get("distill_cache"):  # the resumed run computes the teacher's outputs afresh
        train(globals()["digits_config"](tmp_path / "teacher", epochs=1))
        options = {**options, "distill_from": str(tmp_path / "teacher")}

    def digits_config(out, **kw):  # noqa: F811 - the module's, with the options under test
        return globals()["digits_config"](out, **options, **kw)

    full = train(digits_config(tmp_path / "full"))

    original = Trainer._save_epoch

    def save_then_die(self, epoch, *args):
        original(self, epoch, *args)
        if epoch == 1:  # killed right after epoch 2 reached the disk
            raise Killed

    monkeypatch.setattr(Trainer, "_save_epoch", save_then_die)
    with pytest.raises(Killed):
        train(digits_config(tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "_save_epoch", original)
    resumed = train(digits_config(tmp_path / "cut"), resume=True)

    assert resumed["top1"] == full["top1"] and resumed["loss"] == full["loss"]
    a, b = load_file(tmp_path / "full" / WEIGHTS_NAME), load_file(tmp_path / "cut" / WEIGHTS_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text().count("\n") == 3


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    original = Trainer.train_one_epoch

    def interrupted_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(digits_config(tmp_path / "run"))
    assert f"stopped in epoch 2; `vitkit train --resume {tmp_path / 'run'}` goes on from epoch 2" \
        in capsys.readouterr().err


def test_a_folder_another_process_trains_into_is_refused(tmp_path):
    from vitkit.train.checkpoint import training_lock
    out = tmp_path / "run"
    with training_lock(out):  # as another process training there holds it
        for resume in (False, True):
            with pytest.raises(VitkitError, match="another process is training into this folder"):
                train(digits_config(out, epochs=1), resume=resume)
    assert not out.exists()  # the lock of a run that never started leaves no folder behind
    train(digits_config(out, epochs=1))
    assert (out / "eval.json").is_file()


def test_resume_without_state_is_clear_error(tmp_path):
    with pytest.raises(VitkitError, match="no training state"):
        train(digits_config(tmp_path), resume=True)


def test_checkpoint_for_another_architecture_names_tensor(tmp_path):
    train(digits_config(tmp_path, epochs=1))
    model, meta = load_checkpoint(tmp_path)
    assert meta["classes"] == [str(i) for i in range(10)] and meta["img_size"] == 16
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    cfg["model_kwargs"]["embed_dim"] = 32
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(VitkitError, match=r"tensor \S+ has shape \(.*\) in the file but \(.*\) in the model"):
        load_checkpoint(tmp_path)


def test_config_precedence_and_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\nlr: 0.01\nbatch-size: 32\n")
    cfg = TrainConfig.from_sources(recipe, lr=0.5)
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (7, 0.5, 32)
    recipe.write_text("epochs: 7\nlearning_rate: 1\n")
    with pytest.raises(VitkitError, match="unknown training option.*learning_rate"):
        TrainConfig.from_sources(recipe)
    with pytest.raises(VitkitError, match="not found"):
        TrainConfig.from_sources(tmp_path / "missing.yaml")
    recipe.write_text("epochs: 7\n1: 0.5\n")
    with pytest.raises(VitkitError, match=r"r.yaml: option names must be words, got 1$"):
        TrainConfig.from_sources(recipe)
    recipe.write_text("lr: 1e-3\nmin_lr: 5E-6\nweight_decay: .5e-1\nseed: 10\n")  # YAML 1.1 would give strings
    cfg = TrainConfig.from_sources(recipe)
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.seed) == (1e-3, 5e-6, 0.05, 10)


def test_cosine_schedule_with_warmup():
    lrs = [cosine_lr(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))
    assert cosine_lr(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = vitkit.create_model("vit_mini_patch4_28")
    no_decay, decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.bias", "head.bias"} <= skipped
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"} <= decayed
    assert no_decay["weight_decay"] == 0.0


def test_layer_decay_on_a_cnn_is_refused():
    with pytest.raises(ValueError, match="layer_decay needs a model with Transformer blocks"):
        param_groups(vitkit.create_model("resnet_mini_28"), 0.05, layer_decay=0.75)


def test_resume_with_ema_switched_on_names_the_setting(tmp_path):
    train(digits_config(tmp_path, epochs=1))
    with pytest.raises(VitkitError, match="trained without an EMA"):
        train(digits_config(tmp_path, epochs=2, ema_decay=0.9), resume=True)


def test_resume_refuses_another_model_dataset_or_fewer_epochs(tmp_path):
    train(digits_config(tmp_path, epochs=2))
    with pytest.raises(VitkitError, match=r"keeps its model, data, batches and optimiser \(dataset 'digits' -> "
                                          r"'fashion-mnist'\)"):
        train(digits_config(tmp_path, epochs=3, dataset="fashion-mnist"), resume=True)
    # the schedule's step would pass its end, a folder would re-split, the optimiser keeps its own settings
    for change in (dict(batch_size=64), dict(seed=7), dict(val_fraction=0.5), dict(weight_decay=0.5),
                   dict(betas=(0.5, 0.6))):
        with pytest.raises(VitkitError, match=f"{next(iter(change))} .* -> "):
            train(digits_config(tmp_path, epochs=3, **change), resume=True)
    with pytest.raises(VitkitError, match=r"model_kwargs .* -> "):
        train(digits_config(tmp_path, epochs=3, model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}),
              resume=True)
    with pytest.raises(VitkitError, match="already trained 2 epochs, more than --epochs 1; give --epochs 2 or more"):
        train(digits_config(tmp_path, epochs=1), resume=True)


def test_resume_may_name_the_run_s_own_size_and_unfinishes_a_finished_run(tmp_path, monkeypatch):
    train(digits_config(tmp_path, epochs=1))  # img_size left out: the model's own, 16
    assert (tmp_path / "eval.json").is_file()

    def killed(self, epoch):
        raise Killed

    monkeypatch.setattr(Trainer, "train_one_epoch", killed)
    with pytest.raises(Killed):  # --img-size 16 names the size the run trained at: not a change
        train(digits_config(tmp_path, epochs=2, img_size=16), resume=True)
    assert not (tmp_path / "eval.json").exists(), "a run given more epochs is unfinished until they are done"


def test_a_fine_tune_resumes_without_its_pretrained_weights(tmp_path):
    import shutil
    train(digits_config(tmp_path / "pre", epochs=1))
    ft = dict(init_from=str(tmp_path / "pre"), model_kwargs={}, lr=1e-3)
    train(digits_config(tmp_path / "ft", epochs=1, **ft))
    shutil.rmtree(tmp_path / "pre")  # moved or deleted since: the run holds everything it needs
    report = train(digits_config(tmp_path / "ft", epochs=2, **ft), resume=True)
    assert report["epochs"] == 2 and report["top1"] > 0.3


def test_img_size_and_model_kwargs_img_size_must_agree(tmp_path):
    with pytest.raises(VitkitError, match="img_size 24 and model_kwargs img_size 16 disagree"):
        train(digits_config(tmp_path, img_size=24))
    assert not (tmp_path / "eval.json").exists()


def test_layer_decay_scales_learning_rate_by_depth():
    model = vitkit.create_model("vit_mini_patch4_28")  # depth 6
    groups = param_groups(model, 0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 1.0
    assert scale["blocks.5.mlp.fc1.weight"] == 0.5 and scale["blocks.0.attn.qkv.weight"] == 0.5 ** 6
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == 0.5 ** 7
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("values, message", [
    ({"reprob": "high"}, "reprob must be a number, got 'high'"),
    ({"repeated_aug": 3.0}, "repeated_aug must be an integer"),
    ({"resized_crop_scale": ["a", 1]}, "resized_crop_scale must be a pair of numbers"),
    ({"ema_decay": True}, "ema_decay must be a number"),
    ({"hflip": "false"}, "hflip must be true or false, got 'false'"),  # a string would count as true
    ({"model": 3}, "model must be a string, got 3"),
    ({"model_kwargs": [1]}, "model_kwargs must be a mapping"),
])
def test_recipe_values_of_the_wrong_type_are_named(values, message):
    with pytest.raises(VitkitError, match=message):
        TrainConfig.from_dict(values)
    assert TrainConfig.from_dict({"warmup_epochs": 1, "clip_grad": None}).warmup_epochs == 1  # ints are numbers

@pytest.mark.parametrize("bad, message", [(dict(epochs=0), "epochs must be positive"),
                                          (dict(precision="fp8"), "precision must be auto, fp32, bf16 or fp16")])
def test_a_config_built_in_python_is_checked_by_train(tmp_path, bad, message):
    with pytest.raises(VitkitError, match=message):
        train(TrainConfig(dataset="digits", output=str(tmp_path / "r"), **bad))
    assert not (tmp_path / "r").exists()

def test_a_diverged_epoch_stops_the_run_before_it_is_saved(tmp_path):
    """A short epoch never reaches a log_every check: the epoch's mean loss is checked too."""
    with pytest.raises(VitkitError, match="training diverged: the mean loss of epoch 1 is nan"):
        train(digits_config(tmp_path, epochs=2, mean=[0.5], std=[1e-30], log_every=1000))
    assert not (tmp_path / "train_state.pt").exists() and not (tmp_path / "model.safetensors").exists()

def test_a_null_override_switches_a_recipe_option_off(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ema_decay: 0.999\nclip_grad: 1.0\nrandaugment: rand-m9\n")
    cfg = TrainConfig.from_sources(recipe, ema_decay=None, clip_grad=None, randaugment=None)
    assert (cfg.ema_decay, cfg.clip_grad, cfg.randaugment) == (None, None, None)
    with pytest.raises(VitkitError, match="lr cannot be null"):
        TrainConfig.from_sources(recipe, lr=None)


def test_model_kwargs_given_on_the_command_line_add_to_the_recipes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_kwargs: {class_token: false, global_pool: avg}\n")
    cfg = TrainConfig.from_sources(recipe, model_kwargs={"patch_drop_rate": 0.5, "global_pool": "map"})
    assert cfg.model_kwargs == {"class_token": False, "global_pool": "map", "patch_drop_rate": 0.5}

def test_every_recipe_field_refuses_a_value_of_the_wrong_type():
    """Guards the type checks as fields are added: each field, given a wrong kind of value, is a clear error."""
    for f in dataclasses.fields(TrainConfig):
        bad = 3 if str(f.type).startswith("str") else "x"
        with pytest.raises(VitkitError, match=f.name):
            TrainConfig.from_dict({f.name: bad})


def test_a_bad_value_is_blamed_on_the_recipe_file_only_when_it_comes_from_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\nreprob: high\nlr: 1e-3\n")
    with pytest.raises(VitkitError, match=r"r\.yaml: reprob must be a number, got 'high'"):
        TrainConfig.from_sources(recipe)
    assert TrainConfig.from_sources(recipe, reprob=0.25).reprob == 0.25  # the override mends it
    recipe.write_text("epochs: 3\n")
    with pytest.raises(VitkitError, match=r"^epochs must be positive, got 0$"):  # from the command line, not the file
        TrainConfig.from_sources(recipe, epochs=0)


def test_a_run_folder_is_not_trained_over_unless_asked(tmp_path):
    cfg = digits_config(tmp_path / "run", epochs=1)
    train(cfg)
    (tmp_path / "run" / "model.onnx").write_bytes(b"an export of the old model")
    (tmp_path / "run" / "explain").mkdir()
    (tmp_path / "run" / "explain" / "report.html").write_text("the old model's attention")
    (tmp_path / "run" / "notes.txt").write_text("the user's own file")
    with pytest.raises(VitkitError, match=r"run: holds a finished run; --overwrite replaces it"):
        train(cfg)
    for reads in ({"init_from": str(tmp_path / "run")}, {"distill_from": str(tmp_path / "run" / "best")}):
        with pytest.raises(VitkitError, match="is also where this run reads"):  # --overwrite would delete it
            train(digits_config(tmp_path / "run", epochs=1, **reads), overwrite=True)
    with pytest.raises(VitkitError, match="no_such_folder"):  # a new run that cannot start deletes nothing
        train(digits_config(tmp_path / "run", epochs=1, dataset=f"folder:{tmp_path / 'no_such_folder'}"),
              overwrite=True)
    assert (tmp_path / "run" / "model.onnx").is_file() and (tmp_path / "run" / "train_state.pt").is_file()
    train(cfg, overwrite=True)
    assert not (tmp_path / "run" / "model.onnx").exists(), "a stale export would run the old model"
    assert not (tmp_path / "run" / "explain").exists(), "the old model's figures would pass for the new one's"
    (tmp_path / "run" / "best" / "why.txt").write_text("the user's note on the best epoch")
    train(cfg, overwrite=True)
    assert (tmp_path / "run" / "best" / "why.txt").is_file(), "a user's own file in best/ stays"
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "notes.txt").is_file() and (tmp_path / "run" / "eval.json").is_file()
    (tmp_path / "run" / "eval.json").unlink()  # as if killed before the end
    with pytest.raises(VitkitError, match=r"unfinished run; `vitkit train --resume .*run` continues it"):
        train(cfg)
    (tmp_path / "run" / "train_state.pt").unlink()  # as if killed while saving its first epoch
    (tmp_path / "run" / ".train_state.pt.x1.tmp").write_bytes(b"half a file")
    with pytest.raises(VitkitError, match=r"stopped before its first epoch was saved \(nothing to resume\); "
                                          r"--overwrite replaces it"):
        train(cfg)
    train(cfg, overwrite=True)
    assert not list((tmp_path / "run").glob(".*.tmp"))


def _folder(root: Path, per_class: int) -> None:
    from PIL import Image
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (16, 16), 60 * c + i).save(root / name / f"{i}.png")


def test_a_folder_with_val_and_test_is_scored_on_val_each_epoch_and_on_test_once(tmp_path):
    _folder(tmp_path / "ds" / "train", 6)
    _folder(tmp_path / "ds" / "val", 2)
    _folder(tmp_path / "ds" / "test", 3)
    cfg = digits_config(tmp_path / "run", dataset=f"folder:{tmp_path / 'ds'}", epochs=1, batch_size=4,
                        model_kwargs={**DIGITS_MODEL, "in_chans": 1})
    trainer = Trainer(cfg)
    assert (len(trainer.train_ds), len(trainer.eval_ds), len(trainer.test_ds)) == (12, 4, 6)
    assert train(cfg)["num_samples"] == 6


def test_a_run_stores_its_folder_as_an_absolute_path_so_eval_works_from_elsewhere(tmp_path, monkeypatch):
    from vitkit.cli import main
    _folder(tmp_path / "ds", 4)
    monkeypatch.chdir(tmp_path)
    train(digits_config(tmp_path / "run", dataset="folder:ds", epochs=1, batch_size=4,
                        model_kwargs={**DIGITS_MODEL, "in_chans": 1}))
    stored = json.loads((tmp_path / "run" / CONFIG_NAME).read_text())
    assert stored["dataset"] == f"folder:{(tmp_path / 'ds').resolve()}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "train"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "1"]) == 0  # finished: evaluates again


def test_a_folder_of_one_class_is_refused(tmp_path):
    _folder(tmp_path / "ds", 4)
    import shutil
    shutil.rmtree(tmp_path / "ds" / "dog")
    with pytest.raises(VitkitError, match=r"only one class \(cat\); a classifier needs two or more"):
        train(digits_config(tmp_path / "run", dataset=f"folder:{tmp_path / 'ds'}"))


def test_a_run_written_inside_its_image_folder_is_refused(tmp_path):
    _folder(tmp_path / "ds", 4)
    with pytest.raises(VitkitError, match="is inside the dataset folder .*; write it elsewhere"):
        train(digits_config(tmp_path / "ds" / "runs" / "a", dataset=f"folder:{tmp_path / 'ds'}"))
    assert not (tmp_path / "ds" / "runs").exists()


def test_a_patch_drop_schedule_sets_each_epochs_rate_and_survives_a_resume(tmp_path, monkeypatch):
    seen = []
    train_one_epoch, save_epoch = Trainer.train_one_epoch, Trainer._save_epoch

    def record(self, epoch):
        loss = train_one_epoch(self, epoch)
        seen.append(getattr(self.model.patch_drop, "prob", 0.0))
        return loss

    def save_then_die(self, epoch, *args):
        save_epoch(self, epoch, *args)
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(Trainer, "train_one_epoch", record)
    cfg = digits_config(tmp_path, epochs=4, patch_drop_schedule={"2": 0.5, 4: 0.0})  # JSON brings "2"
    assert cfg.patch_drop_schedule == {2: 0.5, 4: 0.0}
    train(cfg)
    assert seen == [0.0, 0.5, 0.5, 0.0]  # before the first stage: the model's own rate
    seen.clear()
    monkeypatch.setattr(Trainer, "_save_epoch", save_then_die)
    with pytest.raises(Killed):
        train(digits_config(tmp_path / "cut", epochs=4, patch_drop_schedule={2: 0.5, 4: 0.0}))
    monkeypatch.setattr(Trainer, "_save_epoch", save_epoch)
    train(digits_config(tmp_path / "cut", epochs=4, patch_drop_schedule={2: 0.5, 4: 0.0}), resume=True)
    assert seen == [0.0, 0.5, 0.5, 0.0]  # the resumed run picks the schedule up at epoch 3


@pytest.mark.parametrize("schedule, message", [
    ({0: 0.5}, "epochs must be integers >= 1"), ({1: 1.0}, r"rates in \[0, 1\)"), ([0.5], "must map first epochs"),
    ({"one": 0.5}, "got 'one': 0.5"),
])
def test_a_bad_patch_drop_schedule_is_named(tmp_path, schedule, message):
    with pytest.raises(VitkitError, match=message):
        digits_config(tmp_path, patch_drop_schedule=schedule)


def test_a_patch_drop_schedule_on_a_cnn_is_refused(tmp_path):
    with pytest.raises(VitkitError, match="resnet_mini_28: patch_drop_schedule needs a ViT"):
        Trainer(digits_config(tmp_path, model="resnet_mini_28", model_kwargs={}, patch_drop_schedule={1: 0.5}))


def test_a_warmup_as_long_as_the_run_warns(tmp_path):
    with pytest.warns(UserWarning, match="warmup_epochs 3.0 > epochs 2: the learning rate never reaches its peak"):
        digits_config(tmp_path, epochs=2, warmup_epochs=3.0)


@pytest.mark.parametrize("bad, message", [
    ({"drop_path_rate": 2}, r"drop_path_rate must be in \[0, 1\)"), ({"img_size": 0}, "img_size must be positive"),
    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"), ({"workers": -1}, "workers must be >= 0"),
    ({"clip_grad": -1}, "clip_grad must be >= 0"), ({"epochs": 0}, "epochs must be positive, got 0"),
    ({"lr": 5e-6}, "min_lr 1e-05 is above lr 5e-06"),  # the cosine would climb
    ({"layer_decay": -1.0}, r"layer_decay must be in \(0, 1\]"), ({"layer_decay": 0.0}, "layer_decay must be in"),
    ({"crop_padding": -1}, "crop_padding must be >= 0"),
])
def test_recipe_values_out_of_range_are_refused(tmp_path, bad, message):
    with pytest.raises(VitkitError, match=message):
        digits_config(tmp_path, **bad)


@pytest.mark.parametrize("bad, message", [
    ({"model": "vit_nope"}, "unknown model 'vit_nope'"),
    ({"img_size": 30}, "image size 30 is not divisible by the patch size 4"),
    ({"model_kwargs": {"num_classes": 3}}, "num_classes 3 does not match the dataset's 10 classes"),
])
def test_a_model_the_recipe_cannot_build_is_one_clear_error(tmp_path, bad, message):
    kwargs = {k: v for k, v in DIGITS_MODEL.items() if k != "img_size"}
    kwargs.update(bad.pop("model_kwargs", {}))
    with pytest.raises(VitkitError, match=message):
        Trainer(digits_config(tmp_path, model_kwargs=kwargs, **bad))


@pytest.mark.parametrize("edit, message", [
    (lambda c: [c], "expected a JSON object"),
    (lambda c: {**c, "std": [0.0]}, "std > 0"),
    (lambda c: {**c, "mean": [0.5, 0.5, 0.5]}, "one value per input channel"),
    (lambda c: {**c, "img_size": 32}, "config says 1 channels at 32 px"),
    (lambda c: {**c, "img_size": "16"}, "whole numbers, got 1 and '16'"),
    (lambda c: {**c, "std": ["0.5"]}, "one value per input channel"),
    (lambda c: {**c, "model": "vit_nonexistent"}, "unknown model 'vit_nonexistent'"),
    (lambda c: {**c, "classes": ["a", "a"]}, "classes must be a list of distinct names"),
    (lambda c: {**c, "classes": ["a", "b", "c"]}, "config lists 3 classes but the head has 2 outputs"),
])
def test_a_hand_edited_config_that_contradicts_the_weights_names_the_file(tmp_path, edit, message):
    model = vitkit.create_model("vit_mini_patch4_28", **DIGITS_MODEL, in_chans=1, num_classes=2)
    save_checkpoint(tmp_path, model, dict(classes=["a", "b"], mean=[0.5], std=[0.5], img_size=16, in_chans=1))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(edit(config)))
    with pytest.raises(VitkitError, match=message) as e:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_run_files_get_the_usual_permissions(tmp_path):
    import os
    from vitkit.fileio import write_json
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "eval.json", {"top1": 1.0})
        save_checkpoint(tmp_path, vitkit.create_model("vit_mini_patch4_28", **DIGITS_MODEL, in_chans=1, num_classes=2),
                        dict(classes=["a", "b"], mean=[0.5], std=[0.5], img_size=16, in_chans=1))
    finally:
        os.umask(old)
    for name in ("eval.json", "model.safetensors", CONFIG_NAME):  # safetensors itself writes 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    from vitkit.data import normalize
    from vitkit.train import predict_logits
    model = vitkit.create_model("vit_mini_patch4_28", **DIGITS_MODEL, num_classes=10).eval()
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got, targets = predict_logits(model, [(images, torch.arange(6))], (0.5,), (0.25,), flip_tta=True)
    x = normalize(images, (0.5,), (0.25,))
    with torch.no_grad():
        want = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(got, want)
    plain, _ = predict_logits(model, [(images, torch.arange(6))], (0.5,), (0.25,))
    assert not torch.allclose(plain, got) and torch.equal(targets, torch.arange(6))


def test_a_missing_teacher_is_named_with_the_recipe_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = digits_config(tmp_path / "run", epochs=1, distill_from="runs/cnn")
    with pytest.raises(VitkitError, match=r"distill_from: runs/cnn: no such file or folder; train or fetch it"):
        train(cfg)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "cnn.yaml").write_text("model: resnet_mini_28\n")
    with pytest.raises(VitkitError, match=r"`vitkit train --config recipes/cnn.yaml --output runs/cnn` makes it"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_mean_and_std_set_the_normalisation_the_checkpoint_keeps(tmp_path):
    train(digits_config(tmp_path, epochs=1, mean=[0.25], std=[0.5]))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mean"] == [0.25] and saved["std"] == [0.5]  # what eval, predict and serve will apply
    with pytest.raises(VitkitError, match="mean and std have 3 values; the model reads 1 channel"):
        train(digits_config(tmp_path / "rgb", epochs=1, mean=[0.5] * 3, std=[0.5] * 3))

def test_weights_without_normalisation_get_a_named_assumption_and_convert_records_one(tmp_path):
    """A timm file keeps no mean/std: 0.5 is assumed (ImageNet's for a distilled DeiT, whose token says
    it is Facebook's), with a warning; `vitkit convert --mean/--std` writes a folder that records it."""
    from vitkit.weights import convert, save_timm
    save_timm(vitkit.create_model("vit_mini_patch4_28", in_chans=3), tmp_path / "vit.safetensors")
    save_timm(vitkit.create_model("deit_mini_distilled_patch4_28", in_chans=3), tmp_path / "deit.safetensors")
    with pytest.warns(UserWarning, match=r"vit.safetensors: the weights do not record .* 0.5, as Google's"):
        assert load_checkpoint(tmp_path / "vit.safetensors")[1]["std"] == [0.5] * 3
    with pytest.warns(UserWarning, match="ImageNet's, as DeiT's"):
        assert load_checkpoint(tmp_path / "deit.safetensors")[1]["mean"] == [0.485, 0.456, 0.406]
    convert(tmp_path / "vit.safetensors", tmp_path / "recorded", mean=[0.1, 0.2, 0.3], std=[1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta = load_checkpoint(tmp_path / "recorded")[1]
    assert (meta["mean"], meta["std"]) == ([0.1, 0.2, 0.3], [1, 2, 3])
    with pytest.raises(VitkitError, match=r"one value per input channel \(3\)"):
        convert(tmp_path / "vit.safetensors", tmp_path / "bad", mean=[0.5], std=[0.5])


@pytest.mark.parametrize("values", [{"mean": [0.5]}, {"mean": [0.5, 0.5], "std": [0.5]}, {"mean": [0.5], "std": [0]},
                                    {"mean": ["x"], "std": [1.0]}])
def test_mean_and_std_are_checked_together(values):
    with pytest.raises(VitkitError, match="mean and std must be given together"):
        TrainConfig.from_dict(values)



@pytest.mark.parametrize("shape,bias", [((5, 8), True), ((2, 7, 8), True), ((2, 7, 8), False)])
def test_onednn_linear_equals_f_linear_with_its_gradients(shape, bias):
    from vitkit.train.fp32_linear import onednn_linear
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    weights = torch.randn(*shape[:-1], 6)

    def output_and_grads(fn):
        x.grad = None
        lin.zero_grad()
        out = fn(x, lin.weight, lin.bias)
        (out * weights).sum().backward()
        return [out, x.grad, lin.weight.grad] + ([lin.bias.grad] if bias else [])

    for a, b in zip(output_and_grads(torch.nn.functional.linear), output_and_grads(onednn_linear)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_onednn_linears_keep_the_model_and_step_compiled_as_eager():
    """The swap keeps parameters and state-dict keys; bf16 autocast still takes F.linear; torch.compile
    keeps the op (an opaque custom op) and computes the same loss and gradients."""
    from vitkit.train.fp32_linear import OneDNNLinear, use_onednn_linears
    torch.manual_seed(0)
    plain = vitkit.create_model("vit_mini_patch4_28", num_classes=10, **DIGITS_MODEL)
    fast = vitkit.create_model("vit_mini_patch4_28", num_classes=10, **DIGITS_MODEL)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_linears(fast) == 2 * 4 + 1 and isinstance(fast.head, OneDNNLinear)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x), plain(x))

    def loss_and_grads(model, params):
        for p in params:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in params]

    expected = loss_and_grads(plain, list(plain.parameters()))
    for model in (fast, torch.compile(fast)):
        for a, b in zip(expected, loss_and_grads(model, list(fast.parameters()))):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fp32_training_off_intel_uses_onednn_linears(tmp_path, monkeypatch):
    from vitkit.train import fp32_linear
    from vitkit.train.fp32_linear import OneDNNLinear
    monkeypatch.setattr(fp32_linear, "cpu_is_intel", lambda: False)
    fp32_linear.onednn_pays_off.cache_clear()
    try:
        assert isinstance(Trainer(digits_config(tmp_path)).model.head, OneDNNLinear)
        assert type(Trainer(digits_config(tmp_path / "b", precision="bf16")).model.head) is torch.nn.Linear
    finally:
        fp32_linear.onednn_pays_off.cache_clear()


def test_fine_tuning_does_not_inherit_pretrainings_patch_dropout(tmp_path):
    train(digits_config(tmp_path / "pre", epochs=1, model_kwargs={**DIGITS_MODEL, "patch_drop_rate": 0.5}))
    trainer = Trainer(digits_config(tmp_path / "ft", epochs=1, init_from=str(tmp_path / "pre"), model_kwargs={}))
    assert isinstance(trainer.model.patch_drop, torch.nn.Identity)
    assert trainer.model.build_spec.kwargs["patch_drop_rate"] == 0.0
