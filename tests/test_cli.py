"""The command line end to end on tiny data, as a user types it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.train import TrainConfig

RECIPE = """\
model: vit_mini_patch4_28
dataset: digits
img_size: 16
epochs: {epochs}
batch_size: 32
lr: 3.0e-3
warmup_epochs: 0.5
label_smoothing: 0.0
drop_path_rate: 0.0
crop_padding: 0
hflip: false
precision: fp32
model_kwargs: {{patch_size: 4, embed_dim: 64, depth: 2, num_heads: 2, mlp_ratio: 2.0}}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One trained digits run shared by the CLI tests (about 2 seconds of training)."""
    root = tmp_path_factory.mktemp("cli")
    recipe = root / "digits.yaml"
    recipe.write_text(RECIPE.format(epochs=4))
    assert main(["train", "--config", str(recipe), "--output", str(root / "run")]) == 0
    return root / "run"


def test_train_leaves_a_complete_run(run_dir):
    report = json.loads((run_dir / "eval.json").read_text())
    assert 0.4 < report["top1"] <= 1.0 and report["top1"] <= report["top5"] <= 1.0
    assert report["train_seconds"] > 0 and report["epochs"] == 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["format"] == "vitkit" and config["img_size"] == 16 and len(config["classes"]) == 10


def test_eval_json(run_dir, capsys, tmp_path):
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"top1", "top5", "per_class", "confusion"}
    assert 0 <= out["top1"] <= out["top5"] <= 1
    assert sum(map(sum, out["confusion"])) == out["num_samples"] == 360
    assert (tmp_path / "confusion.png").stat().st_size > 1000 and out["flip_tta"] is False
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--out", str(tmp_path), "--flip-tta"]) == 0
    assert json.loads(capsys.readouterr().out)["flip_tta"] is True
    # int8 as predict and serve run it: the same images, top-1 within a few of the 360
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--out", str(tmp_path), "--precision", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert int8["precision"] == "int8" and abs(int8["top1"] - out["top1"]) <= 3 / 360


def test_evaluate_checkpoint_is_what_eval_reports_and_agrees_with_the_training_report(run_dir, capsys, tmp_path):
    from vitkit.train import evaluate_checkpoint
    metrics = evaluate_checkpoint(run_dir)  # the run's dataset, its test split, fp32
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(metrics))
    trained = json.loads((run_dir / "eval.json").read_text())
    assert metrics["split"] == "test" and abs(metrics["top1"] - trained["top1"]) <= 2 / 360  # as prepared to run
    with pytest.raises(VitkitError, match="do not match the checkpoint's"):
        evaluate_checkpoint(run_dir, "fashion-mnist")


def test_eval_scores_all_of_a_new_folder_and_writes_beside_a_weights_file(run_dir, capsys, tmp_path):
    """A folder of class folders the model never trained on is scored whole, not its val_fraction;
    weights given as a file get their eval folder beside it."""
    from vitkit.data import load_dataset
    digits = load_dataset("digits", "test")
    for i in range(30):
        folder = tmp_path / "new" / digits.classes[int(digits.targets[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[i, 0].numpy()).save(folder / f"{i}.png")
    for d in digits.classes:  # every class folder must exist, as in the training data
        (tmp_path / "new" / d).mkdir(exist_ok=True)
        Image.fromarray(digits.images[0, 0].numpy()).save(tmp_path / "new" / d / "extra.png")
    argv = ["eval", "--checkpoint", str(run_dir), "--dataset", f"folder:{tmp_path / 'new'}", "--json"]
    assert main(argv + ["--out", str(tmp_path / "e")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "all" and out["num_samples"] == 40
    assert main(argv + ["--out", str(tmp_path / "e"), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 10  # one held out per class
    shutil.copy(run_dir / "model.safetensors", tmp_path / "w.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--dataset", "digits"]) == 0
    assert (tmp_path / "w-eval" / "eval.json").is_file()


def test_predict_folder_reports_bad_files_and_goes_on(run_dir, capsys, tmp_path):
    assert main(["samples", "--dataset", "digits", "--count", "5", "--out", str(tmp_path)]) == 0
    Image.new("RGBA", (40, 25), (255, 0, 0, 128)).save(tmp_path / "odd_mode.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "notes.txt").write_text("hello")
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(run_dir), str(tmp_path), "--json", "--topk", "3"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 1  # some files failed
    assert len(out["predictions"]) == 6
    assert all(len(p["topk"]) == 3 and p["topk"][0]["prob"] >= p["topk"][1]["prob"] for p in out["predictions"])
    bad = {Path(e["path"]).name: e["error"] for e in out["errors"]}
    assert set(bad) == {"broken.png", "notes.txt"}
    assert "broken.png" in bad["broken.png"] and "error: " in captured.err


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_a_typo_in_the_pixel_limit_is_one_error_not_one_per_image(run_dir, tmp_path, capsys, monkeypatch, command):
    from vitkit.data import images
    images._env_max_image_pixels.cache_clear()
    assert main(["samples", "--dataset", "digits", "--count", "3", "--out", str(tmp_path)]) == 0
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "abc")
    capsys.readouterr()
    out = ["--out", str(tmp_path / "out")] if command == "explain" else []
    assert main([command, "--checkpoint", str(run_dir), str(tmp_path)] + out) == 2
    err = capsys.readouterr().err
    assert err == "error: VITKIT_MAX_IMAGE_PIXELS must be a whole number, got 'abc'\n"


def test_explain_writes_report(run_dir, tmp_path, capsys):
    samples = tmp_path / "s"
    main(["samples", "--dataset", "digits", "--count", "2", "--out", str(samples)])
    assert main(["explain", "--checkpoint", str(run_dir), *map(str, sorted(samples.iterdir())),
                 "--out", str(tmp_path / "x")]) == 0
    html = (tmp_path / "x" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 4
    assert main(["explain", "--checkpoint", str(run_dir), "--figure", "attention-distance", "--limit", "64",
                 "--out", str(tmp_path / "d")]) == 0
    dist = json.loads((tmp_path / "d" / "attention_distance.json").read_text())["mean_distance_px"]
    assert len(dist) == 2 and len(dist[0]) == 2


def test_explain_limit_counts_images_not_batches(run_dir, tmp_path, monkeypatch):
    import vitkit.explain
    seen = []
    figure = vitkit.explain.attention_distance_figure

    def counting(model, batches, path):
        return figure(model, (seen.append(len(b)) or b for b in batches), path)

    monkeypatch.setattr(vitkit.explain, "attention_distance_figure", counting)
    for limit in (70, 5):
        seen.clear()
        assert main(["explain", "--checkpoint", str(run_dir), "--figure", "attention-distance", "--limit",
                     str(limit), "--out", str(tmp_path / "d")]) == 0
        assert sum(seen) == limit


def test_convert_round_trip(run_dir, tmp_path, capsys):
    """Through HF (preprocessor_config.json) and through a timm file (its header) and back, the
    normalisation and class names too: the same accuracy."""
    assert main(["convert", str(run_dir), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["image_mean"] == config["mean"]
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert main(["convert", str(run_dir), str(tmp_path / "w.safetensors"), "--to", "timm"]) == 0
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "back-timm")]) == 0
    back = json.loads((tmp_path / "back-timm" / "config.json").read_text())
    assert [back[k] for k in ("classes", "mean", "std")] == [config[k] for k in ("classes", "mean", "std")]
    top1 = []
    for run in (run_dir, tmp_path / "back", tmp_path / "back-timm"):
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run), "--dataset", "digits", "--json",
                     "--out", str(tmp_path / "e")]) == 0
        top1.append(json.loads(capsys.readouterr().out)["top1"])
    assert top1[0] == top1[1] == top1[2]


def test_convert_with_a_new_size_or_head_writes_what_the_model_now_is(run_dir, tmp_path, capsys):
    from PIL import Image
    Image.new("L", (16, 16), 90).save(tmp_path / "a.png")
    for key, value in (("img_size", 32), ("num_classes", 3)):
        out = tmp_path / key
        assert main(["convert", str(run_dir), str(out), "--set", f"{key}={value}"]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["img_size"] == (32 if key == "img_size" else 16)
        assert ("classes" in config) == (key == "img_size")  # a new head's classes have no names yet
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(out), str(tmp_path / "a.png")]) == 0
        assert capsys.readouterr().out.count("%") == (5 if key == "img_size" else 3)


def test_set_overrides_any_recipe_field_including_ones_with_flags(tmp_path):
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(RECIPE.format(epochs=4))
    assert main(["train", "--config", str(recipe), "--set", "epochs=1", "--set", "model=sl_vit_mini_patch4_28",
                 "--set", "min_lr=1e-6", "--output", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["epochs"] == 1 and report["model"] == "sl_vit_mini_patch4_28"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["min_lr"] == 1e-6  # not '1e-6'


def test_models_lists_counts(capsys):
    assert main(["models", "vit_base_patch16_*"]) == 0
    out = capsys.readouterr().out
    assert "vit_base_patch16_224" in out and "86,567,656" in out and "vit_base_patch16_384" in out


@pytest.mark.parametrize("argv,fragment", [
    (["eval", "--checkpoint", "/nonexistent/run"], "/nonexistent/run"),
    (["predict", "--checkpoint", "/nonexistent/run", "x.png"], "/nonexistent/run"),
    (["predict", "--checkpoint", "exported.onnx", "--runtime", "onnx", "x.png"], "--onnx exported.onnx"),
    (["predict", "--checkpoint", "run", "--runtime", "onnx", "--precision", "bf16", "x.png"],
     "--precision bf16 applies to the torch runtime"),
    (["train", "--dataset", "folder:/no/such/folder", "--epochs", "1"], "/no/such/folder"),
    (["train", "--config", "/no/recipe.yaml"], "/no/recipe.yaml"),
    (["models", "resnext*"], "no model matches"),
    (["train", "--set", "randaugment=rand-x9", "--epochs", "1"], "randaugment"),
    (["train", "--epochs", "1", "--set", "epochs=2"], "epochs is given twice"),
    (["train", "--set", "lr=[1", "--epochs", "1"], "--set lr=[1: not a YAML value"),
    (["train", "--model", "vit_nope", "--dataset", "digits", "--epochs", "1"], "unknown model 'vit_nope'"),
    (["samples", "--dataset", "digits", "--out", "/proc/version"], "/proc/version: "),
    (["train", "--resume", "run", "--config", "r.yaml"], "--config r.yaml would not be read"),
    (["train", "--resume", "run", "--overwrite"], "choose one"),
    (["train", "--set", "model_kwargs={depth:7}", "--epochs", "1"], "write a space after each colon"),
    (["train", "--set", "patch_drop_schedule={1: 0.75, 16:0}", "--epochs", "1"], "16:0 as the number 960"),
    (["train", "--dataset", "folder:", "--epochs", "1"], "folder: needs the folder's path"),
    (["samples", "--dataset", "digits", "--split", "all", "--out", "s"], "split 'all' is for folders"),
])
def test_bad_input_is_one_clear_line(argv, fragment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vitkit", *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


@pytest.mark.parametrize("var", ["VITKIT_MAX_IMAGE_PIXELS", "VITKIT_FOLDER_MEMORY_MB"])
def test_a_mistyped_environment_variable_is_one_clear_line(tmp_path, var):
    folder = tmp_path / "ds"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8)).save(folder / c / f"{i}.png")
    argv = ["samples", "--dataset", f"folder:{folder}", "--count", "1", "--out", str(tmp_path / "s")]
    proc = subprocess.run([sys.executable, "-m", "vitkit", *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env={**os.environ, var: "1GB"})
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {var} must be a whole number, got '1GB'"


def test_ddp_two_processes(tmp_path):
    """torchrun with 2 gloo processes trains, and only rank 0 writes."""
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(RECIPE.format(epochs=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "vitkit", "train", "--config", str(recipe),
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["processes"] == 2 and report["top1"] > 0.3
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3
    assert proc.stderr.count("done: top-1") == 1


def test_finetune_at_twice_the_resolution(run_dir, tmp_path):
    """Pretrained body, zero-initialised head, position embeddings resampled from 4x4 to 8x8."""
    assert main(["finetune", "--checkpoint", str(run_dir), "--dataset", "digits", "--img-size", "32",
                 "--epochs", "2", "--batch-size", "32", "--lr", "1e-3", "--precision", "fp32", "--layer-decay", "0.75",
                 "--set", "hflip=false", "--set", "crop_padding=0", "--output", str(tmp_path / "ft")]) == 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["img_size"] == 32 and config["model_kwargs"]["img_size"] == 32
    report = json.loads((tmp_path / "ft" / "eval.json").read_text())
    assert report["top1"] > 0.4
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    from vitkit.train.optim import cosine_lr
    steps = rows[0]["step"]  # one epoch's; the default warmup is one epoch, the default min_lr 1e-5
    assert rows[0]["lr"] == pytest.approx(cosine_lr(steps - 1, 2 * steps, steps, 1e-3, 1e-5))  # not a group's


def test_linear_probe_changes_only_the_head(run_dir, tmp_path):
    from safetensors.torch import load_file
    assert main(["finetune", "--checkpoint", str(run_dir), "--dataset", "digits", "--linear-probe", "--epochs", "1",
                 "--batch-size", "32", "--precision", "fp32", "--output", str(tmp_path / "lp")]) == 0
    before, after = load_file(run_dir / "model.safetensors"), load_file(tmp_path / "lp" / "model.safetensors")
    assert all(torch_equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert not torch_equal(before["head.weight"], after["head.weight"])


def test_linear_probe_of_a_cnn_keeps_its_batchnorm_statistics(tmp_path):
    from safetensors.torch import load_file

    from vitkit.train import save_checkpoint
    cnn = vitkit.create_model("resnet_mini_28", num_classes=10, in_chans=1)
    save_checkpoint(tmp_path / "cnn", cnn, dict(classes=[str(i) for i in range(10)], mean=[0.5], std=[0.25],
                                                img_size=28, in_chans=1))
    assert main(["finetune", "--checkpoint", str(tmp_path / "cnn"), "--dataset", "digits", "--linear-probe",
                 "--epochs", "1", "--batch-size", "64", "--precision", "fp32", "--output", str(tmp_path / "lp")]) == 0
    before, after = load_file(tmp_path / "cnn" / "model.safetensors"), load_file(tmp_path / "lp" / "model.safetensors")
    assert any("running_mean" in k for k in before)
    assert all(torch_equal(before[k], after[k]) for k in before if not k.startswith("fc."))
    assert not torch_equal(before["fc.weight"], after["fc.weight"])


def test_finetune_records_and_names_the_model_of_its_checkpoint(tmp_path, capsys):
    """Not the recipe's default model name: config.json and messages say what the weights hold."""
    from vitkit.train import save_checkpoint
    cnn = vitkit.create_model("resnet_mini_28", num_classes=10, in_chans=1)
    save_checkpoint(tmp_path / "cnn", cnn, dict(classes=[str(i) for i in range(10)], mean=[0.5], std=[0.25],
                                                img_size=28, in_chans=1))
    common = ["finetune", "--checkpoint", str(tmp_path / "cnn"), "--dataset", "digits", "--epochs", "1",
              "--batch-size", "64", "--precision", "fp32", "--set", "crop_padding=0"]
    assert main(common + ["--layer-decay", "0.75", "--output", str(tmp_path / "a")]) == 2
    assert "error: resnet_mini_28: layer_decay needs a model with Transformer blocks" in capsys.readouterr().err
    assert main(common + ["--set", "model=vit_small_patch16_224", "--output", str(tmp_path / "b")]) == 2
    assert "model does not apply" in capsys.readouterr().err
    assert main(common + ["--set", "init_from=elsewhere", "--output", str(tmp_path / "b")]) == 2
    assert "starts from --checkpoint; drop --set init_from" in capsys.readouterr().err
    assert main(common + ["--output", str(tmp_path / "c")]) == 0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["recipe"]["model"] == "resnet_mini_28" == config["model"]


def torch_equal(a, b) -> bool:
    return bool(torch.equal(a, b))


def test_export_onnx_and_predict_with_onnx_runtime(run_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir, ckpt)
    main(["samples", "--dataset", "digits", "--count", "4", "--out", str(tmp_path / "s")])
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "s"), "--runtime", "onnx"]) == 2  # not exported
    assert main(["export", "--checkpoint", str(ckpt)]) == 0 and (ckpt / "model.onnx").is_file()
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "s"), "--runtime", "onnx", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)["predictions"]
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "s"), "--precision", "fp32", "--json"]) == 0
    torch_ = json.loads(capsys.readouterr().out)["predictions"]
    for a, b in zip(onnx, torch_):
        assert a["topk"][0]["class"] == b["topk"][0]["class"]
        assert abs(a["topk"][0]["prob"] - b["topk"][0]["prob"]) < 1e-4


def test_predict_runs_an_onnx_file_exported_elsewhere_and_refuses_another_models(run_dir, tmp_path, capsys):
    from vitkit.inference import export
    from vitkit.models import create_model
    main(["samples", "--dataset", "digits", "--count", "2", "--out", str(tmp_path / "s")])
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "elsewhere.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "s"), "--onnx",
                 str(tmp_path / "elsewhere.onnx"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    other = export(create_model("vit_mini_patch4_28", num_classes=3, img_size=16, in_chans=1), tmp_path / "other.onnx")
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "s"), "--onnx", str(other)]) == 2
    assert "other.onnx: takes [1, 16, 16] images and gives 3 classes" in capsys.readouterr().err
    from vitkit.train import load_checkpoint
    retrained, _ = load_checkpoint(run_dir)  # same shapes, other weights: shapes alone cannot tell
    with torch.no_grad():
        retrained.head.bias.add_(torch.arange(10.0))
    export(retrained, tmp_path / "retrained.onnx")
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "s"), "--onnx",
                 str(tmp_path / "retrained.onnx")]) == 2
    assert "retrained.onnx: its logits differ from" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_text("not a model")
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "s"), "--onnx",
                 str(tmp_path / "junk.onnx")]) == 2
    assert "junk.onnx: not a valid ONNX model" in capsys.readouterr().err


def test_help_shows_defaults_including_the_recipe_fields(capsys):
    """Recipe options are None on the parser (a --config file may set them); help shows TrainConfig's."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {TrainConfig().lr})" in text and f"(default: {TrainConfig().model})" in text
    assert "(default: enough for 600 optimiser steps, at least 10)" in text  # left to vitkit, and said so
    assert f"stochastic depth rate of the last block (default: {TrainConfig().drop_path_rate})" in text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(default: 8000)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [["predict", "--checkpoint", "run", "--batch-size", "0", "x.png"],
                                  ["predict", "--checkpoint", "run", "--topk", "-1", "x.png"],
                                  ["eval", "--checkpoint", "run", "--batch-size", "-5"],
                                  ["samples", "--dataset", "digits", "--out", "s", "--count", "0"]])
def test_counts_and_sizes_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_train_distilled_student_from_a_teacher_checkpoint(run_dir, tmp_path):
    """`--distill-from` takes any vitkit checkpoint as the teacher (here the shared ViT run)."""
    recipe = tmp_path / "student.yaml"
    recipe.write_text(RECIPE.format(epochs=1).replace("vit_mini_patch4_28", "deit_mini_distilled_patch4_28"))
    out = tmp_path / "student"
    assert main(["train", "--config", str(recipe), "--output", str(out), "--distill-from", str(run_dir),
                 "--distill", "soft", "--set", "distill_tau=2.0"]) == 0
    recipe_used = json.loads((out / "config.json").read_text())["recipe"]
    assert (recipe_used["distill_from"], recipe_used["distill"], recipe_used["distill_tau"]) == (str(run_dir), "soft", 2.0)
    assert json.loads((out / "eval.json").read_text())["num_samples"] == 360


def test_shipped_recipes_are_valid():
    from vitkit.models import create_model
    from vitkit.train import TrainConfig
    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert {"demo", "vit", "deit", "fmnist-vit", "fmnist-distilled", "fmnist-hybrid", "fmnist-cnn"} <= {p.stem for p in recipes}
    for path in recipes:
        cfg = TrainConfig.from_sources(path)
        create_model(cfg.model, **cfg.model_kwargs)  # an unknown name or keyword raises (all are small models)
        if cfg.distill_from:  # DeiT's distillation token, or classic soft distillation on the one head
            assert "distilled" in cfg.model or cfg.distill == "soft", path
