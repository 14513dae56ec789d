"""Pretrained weights by name from the Hugging Face Hub, offline: a cache laid out as huggingface_hub
lays it out (models--ORG--NAME/refs/main, snapshots/COMMIT/, blobs/HASH) holds small weights in
timm's layout (vitkit writes them as timm's push_to_hub does) and in transformers' (save_pretrained)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitkit
from vitkit.data import EvalResize, load_resized, normalize
from vitkit.data.imagenet import imagenet_classes, imagenet_synsets
from vitkit.errors import VitkitError
from vitkit.weights import hub, load_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # vit_tiny_patch16_224's default tag
TINY = dict(img_size=32, embed_dim=48, depth=2, num_heads=3)


@pytest.fixture(scope="module")
def transformers():
    sys.modules.setdefault("torchvision", None)  # the installed one breaks transformers' vision imports
    import transformers
    return transformers


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline, where huggingface_hub looks: the environment (what a new process
    reads) and the constants huggingface_hub read from it when it was imported."""
    from huggingface_hub import constants
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return path


def put_in_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """``folder``'s files as huggingface_hub caches a repo: weights named by their sha256 (Git LFS),
    other files by their git blob sha1, linked from the commit's snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        data = file.read_bytes()
        lfs = file.suffix in (".safetensors", ".bin")
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def timm_folder(folder: Path, model: torch.nn.Module, pretrained_cfg: dict, **config) -> Path:
    """What timm's push_to_hub writes: a plain state dict and config.json (architecture, model_args,
    pretrained_cfg)."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": model.num_classes, "num_features": 48,
           "global_pool": "token", "model_args": TINY, **config,
           "pretrained_cfg": {"tag": "augreg_in21k_ft_in1k", "custom_load": False, "input_size": [3, 32, 32],
                              "fixed_input_size": True, "interpolation": "bicubic", "crop_pct": 0.875,
                              "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "num_classes": model.num_classes, "first_conv": "patch_embed.proj",
                              "classifier": "head", **pretrained_cfg}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def timm_repo(cache, tmp_path):
    """A 1000-class tiny ViT published as timm publishes vit_tiny_patch16_224.augreg_in21k_ft_in1k."""
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY).eval()
    put_in_cache(cache, TIMM_REPO, timm_folder(tmp_path / "timm", model, {}))
    return model


def hf_vit(transformers, num_labels: int = 4):
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    image_size=32, patch_size=8, num_labels=num_labels,
                                    id2label={i: f"kind {i}" for i in range(num_labels)})
    return transformers.ViTForImageClassification(config).eval()


def picture(path: Path, size: tuple[int, int] = (60, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# --- names -----------------------------------------------------------------------------------------
def test_names_resolve_to_the_repos_timm_publishes_them_under():
    assert str(hub.resolve("vit_base_patch16_224.augreg2_in21k_ft_in1k")) == \
        "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert hub.resolve("vit_base_patch16_224").repo_id == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert hub.resolve("vit_small_patch16_224").repo_id == "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert hub.resolve("deit_base_distilled_patch16_224").repo_id == "timm/deit_base_distilled_patch16_224.fb_in1k"
    assert hub.resolve("vit_base_patch16_224.some_new_tag").repo_id == "timm/vit_base_patch16_224.some_new_tag"
    assert hub.resolve("hf-hub:google/vit-base-patch16-224@v1") == hub.HubRef("google/vit-base-patch16-224", "v1")
    assert hub.resolve("vit_base_patch16_224@abc", revision="abc").revision == "abc"


@pytest.mark.parametrize("name, message", [
    ("vit_enormous_patch3_1", "unknown model 'vit_enormous_patch3_1'"),
    ("vit_mini_patch4_28", "knows no pretrained weights for vit_mini_patch4_28"),
    ("google/vit-base-patch16-224", "is named hf-hub:google/vit-base-patch16-224"),
    ("hf-hub:not a repo", "not a Hub repo name"),
    ("vit_base_patch16_224@a", "pinned to 'a' in the name and to 'b'"),
])
def test_bad_names_are_one_clear_line(name, message):
    with pytest.raises(VitkitError, match=message.replace("(", r"\(")) as e:
        hub.resolve(name, revision="b" if "@" in name else None)
    assert "\n" not in str(e.value)


def test_the_pretrained_table_knows_the_papers_weights():
    from vitkit.models import get_pretrained_cfg, list_pretrained
    names = [cfg.name for cfg in list_pretrained()]
    assert len(names) == len(set(names))
    for name in ("vit_base_patch16_224.orig_in21k_ft_in1k", "vit_large_patch16_224.augreg_in21k",
                 "deit3_base_patch16_224.fb_in22k_ft_in1k", "vit_huge_patch14_224.mae"):
        assert name in names
    cfg = get_pretrained_cfg("vit_base_patch16_384.augreg_in21k_ft_in1k")
    assert (cfg.input_size, cfg.crop_pct, cfg.mean) == ((3, 384, 384), 1.0, (0.5, 0.5, 0.5))
    assert get_pretrained_cfg("vit_base_patch16_224.mae").num_classes == 0
    # without pretrained=True, a tagged name builds the architecture with those weights' head, as in timm
    assert vitkit.create_model("vit_tiny_patch16_224.augreg_in21k", weight_init="skip").num_classes == 21843


def test_imagenet_names_are_the_standard_list():
    names, synsets = imagenet_classes(), imagenet_synsets()
    assert len(names) == len(synsets) == len(set(synsets)) == 1000
    assert (names[0], names[281], names[999]) == ("tench, Tinca tinca", "tabby, tabby cat",
                                                  "toilet tissue, toilet paper, bathroom tissue")
    assert synsets[281] == "n02123045" and synsets == sorted(synsets)


# --- timm's layout ----------------------------------------------------------------------------------
def test_timm_repo_loads_exactly_with_its_preprocessing_and_imagenet_names(timm_repo):
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True)  # the default tag
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), timm_repo(x))
    meta = model.checkpoint_meta
    assert meta["source"] == f"hf-hub:{TIMM_REPO}" and meta["revision"] == COMMIT
    assert (meta["crop_pct"], meta["interpolation"], meta["crop_mode"], meta["mean"]) == \
        (0.875, "bicubic", "center", [0.5, 0.5, 0.5])
    assert meta["classes"][281] == "tabby, tabby cat"
    assert meta["classes"][134] == "crane (134)" and meta["classes"][517] == "crane (517)"  # one name per output


def test_a_new_head_for_fine_tuning_and_a_pinned_revision(timm_repo):
    model = vitkit.create_model(f"{TIMM_REPO.split('/')[1]}@{COMMIT}", pretrained=True, num_classes=7)
    assert model.num_classes == 7 and "classes" not in model.checkpoint_meta
    assert torch.equal(model.blocks[1].mlp.fc2.weight, timm_repo.blocks[1].mlp.fc2.weight)


def test_label_names_of_the_repo_win(cache, tmp_path):
    model = vitkit.create_model("vit_tiny_patch16_224", **TINY, num_classes=3)
    put_in_cache(cache, "someone/birds", timm_folder(tmp_path / "t", model, {"crop_mode": "squash"},
                                                     label_names=["n1", "n2", "n3"],
                                                     label_descriptions={"n1": "robin", "n3": "wren"}))
    loaded = vitkit.create_model("hf-hub:someone/birds", pretrained=True)
    assert loaded.checkpoint_meta["classes"] == ["robin", "n2", "wren"]
    assert loaded.checkpoint_meta["crop_mode"] == "squash"


# --- transformers' layout ---------------------------------------------------------------------------
def test_hf_repo_loads_exactly_with_its_processor_and_labels(cache, tmp_path, transformers):
    from transformers import DeiTImageProcessor
    hf = hf_vit(transformers)
    hf.save_pretrained(tmp_path / "hf")
    DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(tmp_path / "hf")
    put_in_cache(cache, "google/vit-small-test", tmp_path / "hf")
    model = vitkit.create_model("hf-hub:google/vit-small-test", pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model.eval()(x) - hf(pixel_values=x).logits).abs().max() < 1e-5
    meta = model.checkpoint_meta
    assert meta["classes"] == [f"kind {i}" for i in range(4)]
    assert (meta["mean"], meta["std"], meta["crop_mode"], meta["interpolation"]) == \
        ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], "squash", "bicubic")
    assert meta["crop_pct"] == pytest.approx(32 / 36)


@pytest.mark.parametrize("processor, kwargs, size", [
    ("ViTImageProcessor", dict(size={"height": 32, "width": 32}), (61, 40)),  # google/vit-*: squash, bilinear
    ("DeiTImageProcessor", dict(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}), (60, 44)),
    ("ConvNextImageProcessor", dict(size={"shortest_edge": 32}, crop_pct=0.875), (60, 44)),  # CvT's
])
def test_vitkit_prepares_images_as_the_repos_processor_does(transformers, tmp_path, processor, kwargs, size):
    """The eval crop read from preprocessor_config.json, applied by vitkit's loader, against the
    processor itself (PIL backend) on the same file."""
    from vitkit.weights.hf import _preprocessing
    proc = getattr(transformers, processor)(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], **kwargs)
    proc.save_pretrained(tmp_path)
    meta = _preprocessing(tmp_path, 3)
    path = picture(tmp_path / "img.png", size)
    ours = normalize(load_resized(path, 32, 3, EvalResize.from_config(meta)), meta["mean"], meta["std"])
    theirs = torch.as_tensor(np.asarray(proc(Image.open(path), return_tensors="np")["pixel_values"][0]))
    assert ours.shape == theirs.shape == (3, 32, 32)
    grey_levels = (ours - theirs) * torch.tensor(meta["std"]).view(3, 1, 1) * 255
    assert grey_levels.abs().max() <= 1.001


# --- timm's eval transform ----------------------------------------------------------------------------
@pytest.mark.parametrize("size, crop_pct, mode, interpolation", [
    ((60, 40), 0.875, "center", "bicubic"), ((41, 77), 0.9, "center", "bilinear"),
    ((50, 50), 1.0, "center", "bicubic"), ((70, 45), 0.875, "squash", "bicubic")])
def test_eval_resize_is_resize_then_center_crop(tmp_path, size, crop_pct, mode, interpolation):
    """timm's eval transform (torchvision: Resize(floor(size / crop_pct)), CenterCrop(size)), done the
    long way with PIL: the whole image resized, then cropped."""
    im = Image.open(picture(tmp_path / "img.png", size))
    scale = math.floor(32 / crop_pct)
    w, h = im.size
    new = (scale, scale) if mode == "squash" else \
        (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    left, top = int(round((new[0] - 32) / 2.0)), int(round((new[1] - 32) / 2.0))
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    expected = np.asarray(im.resize(new, resample).crop((left, top, left + 32, top + 32)), dtype=int)
    ours = np.asarray(EvalResize(crop_pct, interpolation, mode)(im, 32), dtype=int)
    assert np.abs(ours - expected).max() <= 1


def test_eval_resize_refuses_what_it_cannot_do():
    for bad in (dict(crop_pct=0), dict(crop_pct=1.2), dict(interpolation="area"), dict(crop_mode="border")):
        with pytest.raises(VitkitError):
            EvalResize(**bad)


# --- what cannot be read -------------------------------------------------------------------------------
def test_a_file_neither_cached_nor_reachable_is_one_line_naming_the_repo(cache):
    with pytest.raises(VitkitError) as e:
        vitkit.create_model("vit_base_patch16_224.augreg_in1k", pretrained=True)
    message = str(e.value)
    assert message.startswith("hf-hub:timm/vit_base_patch16_224.augreg_in1k: config.json is not in the cache")
    assert "HF_HUB_OFFLINE=1" in message and str(cache) in message and "\n" not in message


def test_missing_weights_are_named(cache, tmp_path, timm_repo):
    snapshot = cache / f"models--{TIMM_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(VitkitError, match="none of model.safetensors, pytorch_model.bin is in the cache"):
        vitkit.create_model("vit_tiny_patch16_224", pretrained=True)


def test_a_truncated_cached_file_is_one_clear_line(cache, timm_repo):
    blob = (cache / f"models--{TIMM_REPO.replace('/', '--')}" / "snapshots" / COMMIT / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1000])
    with pytest.raises(VitkitError) as e:
        vitkit.create_model("vit_tiny_patch16_224", pretrained=True)
    assert str(e.value) == (f"hf-hub:{TIMM_REPO}: the cached model.safetensors is damaged (truncated or changed "
                            f"since it was downloaded); delete {blob} and load again to download it anew")


def test_architectures_vitkit_lacks_are_refused_before_the_weights_are_fetched(cache, tmp_path, transformers):
    (tmp_path / "swin").mkdir()
    (tmp_path / "swin" / "config.json").write_text(json.dumps({"model_type": "swin"}))
    put_in_cache(cache, "microsoft/swin-tiny-patch4-window7-224", tmp_path / "swin")
    with pytest.raises(VitkitError, match=r"^hf-hub:microsoft/swin-tiny-patch4-window7-224: model_type 'swin' is "
                                          "not supported yet"):
        vitkit.create_model("hf-hub:microsoft/swin-tiny-patch4-window7-224", pretrained=True)
    (tmp_path / "cvt").mkdir()
    (tmp_path / "cvt" / "config.json").write_text(json.dumps({"architecture": "efficientvit_b0", "pretrained_cfg": {}}))
    put_in_cache(cache, "timm/efficientvit_b0.r224_in1k", tmp_path / "cvt")
    with pytest.raises(VitkitError, match="architecture 'efficientvit_b0' is not in vitkit"):
        load_model("hf-hub:timm/efficientvit_b0.r224_in1k")


# --- the commands -----------------------------------------------------------------------------------------
@pytest.mark.slow  # a new Python process (~10 s on a busy 2-core machine)
def test_predict_with_model_applies_the_crop_and_names_the_classes(timm_repo, tmp_path):
    """``vitkit predict --model NAME`` in a new process that finds the cache through the environment alone."""
    path = picture(tmp_path / "cat.png")
    env = {**os.environ, "PYTHONPATH": str(Path(vitkit.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-m", "vitkit", "predict", "--model", "vit_tiny_patch16_224", str(path),
                          "--precision", "fp32", "--topk", "2", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["predictions"][0]["topk"]
    x = normalize(load_resized(path, 32, 3, EvalResize(0.875, "bicubic")), [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        probs = timm_repo(x[None]).softmax(-1)[0]
    best = probs.topk(2)
    assert [t["class"] for t in top] == [imagenet_classes()[i] for i in best.indices]
    assert [t["prob"] for t in top] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_commands_name_the_repo_that_is_not_cached(cache, tmp_path, capsys):
    from vitkit.cli import main
    path = picture(tmp_path / "cat.png")
    for command in (["predict", str(path)], ["explain", str(path), "--out", str(tmp_path / "x")],
                    ["export"], ["eval", "--dataset", "digits"]):
        assert main([*command, "--model", "deit_tiny_patch16_224"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: hf-hub:timm/deit_tiny_patch16_224.fb_in1k: config.json is not in the cache")
        assert err.count("\n") == 1
    assert not (Path.cwd() / "deit_tiny_patch16_224.fb_in1k.onnx").exists()


def test_models_pretrained_lists_the_known_tags(capsys):
    from vitkit.cli import main
    assert main(["models", "--pretrained", "deit_base*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["deit_base_distilled_patch16_224.fb_in1k",
                                         "deit_base_distilled_patch16_384.fb_in1k", "deit_base_patch16_224.fb_in1k",
                                         "deit_base_patch16_384.fb_in1k"]
    assert rows[0]["repo"] == "timm/deit_base_distilled_patch16_224.fb_in1k" and rows[1]["crop_pct"] == 1.0
    assert main(["models", "--pretrained", "vit_base_patch16_224"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("vit_base_patch16_224.augreg2_in21k_ft_in1k")  # the default first


@pytest.mark.slow  # 1000 class folders (~20 s on a busy 2-core machine)
def test_eval_model_on_imagenets_own_folder_layout(timm_repo, tmp_path, capsys):
    """ImageNet's val/ names class folders by synset; the model names its outputs in words."""
    from vitkit.cli import main
    root = tmp_path / "val"
    for i, synset in enumerate(imagenet_synsets()):
        (root / synset).mkdir(parents=True)
        picture(root / synset / "a.png", (40, 36), seed=i)
    assert main(["eval", "--model", "vit_tiny_patch16_224", "--dataset", f"folder:{root}", "--split", "all",
                 "--precision", "fp32", "--json", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    crop = EvalResize(0.875, "bicubic")
    x = torch.stack([normalize(load_resized(root / s / "a.png", 32, 3, crop), [0.5] * 3, [0.5] * 3)
                     for s in imagenet_synsets()])
    with torch.no_grad():
        expected = (timm_repo(x).argmax(-1) == torch.arange(1000)).double().mean().item()
    assert metrics["num_samples"] == 1000 and metrics["top1"] == pytest.approx(expected)
