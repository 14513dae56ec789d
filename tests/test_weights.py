"""vitkit.weights: foreign checkpoints give the same logits as the code that made them.

Oracles: tests/fixtures (made with timm 1.0.31 / transformers 5.23, see its README)
and ``transformers`` itself. The fixtures are required: conftest's ``fixtures_dir`` fails the run when they are missing.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.models import resample_abs_pos_embed
from vitkit.weights import convert, load_model, read_checkpoint, resample_patch_embed, save_hf, save_timm, save_vitkit

TOL = 1e-5
FIXTURES: Path  # the reference folder, set for every test by _fixtures_root


@pytest.fixture(autouse=True)
def _fixtures_root(fixtures_dir):
    """conftest's ``fixtures_dir`` fails the run when the reference folder is missing."""
    global FIXTURES
    FIXTURES = fixtures_dir


def fixture(name: str, key: str = "logits") -> tuple[Path, torch.Tensor, torch.Tensor]:
    folder = FIXTURES / name
    return folder, load_file(folder / "input.safetensors")["input"], load_file(folder / "logits.safetensors")[key]


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def transformers():
    # The installed torchvision does not match torch and breaks transformers' vision imports;
    # hiding it makes transformers take its torch-only path (ViT needs nothing else).
    sys.modules.setdefault("torchvision", None)
    import transformers
    return transformers


def hf_classifier(transformers, seed: int = 0, **config):
    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=24,
               patch_size=4, num_labels=5)
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(transformers.ViTConfig(**{**cfg, **config})).eval()


# --- parity with the reference fixtures ------------------------------------------------------
@pytest.mark.parametrize("name, file", [("a_tiny_cls_token", "model.safetensors"),
                                        ("b_tiny_avgpool_noclstoken", "model.safetensors"),
                                        ("hf_tiny", ""), ("npz_original_tiny", "model.npz")])
def test_fixture_logits(name, file):
    folder, x, expected = fixture(name)
    model = vitkit.create_model(checkpoint=folder / file if file else folder, num_heads=2)
    assert max_diff(logits(model, x), expected) <= TOL


def test_fixture_architecture_is_inferred():
    folder, x, expected = fixture("b_tiny_avgpool_noclstoken")
    model = load_model(folder / "model.safetensors", num_heads=2)
    assert model.cls_token is None and model.global_pool == "avg" and model.num_classes == 10
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.img_size == (32, 32)


def test_npz_tells_its_head_count_and_pixel_range():
    folder, x, expected = fixture("npz_original_tiny")
    model = load_model(folder / "model.npz")  # no num_heads: read off the attention kernels
    assert model.blocks[0].attn.num_heads == 2
    channels = model.patch_embed.proj.in_channels  # Google's code feeds pixels scaled to [-1, 1]
    assert model.checkpoint_meta["mean"] == [0.5] * channels and model.checkpoint_meta["std"] == [0.5] * channels
    assert max_diff(logits(model, x), expected) <= TOL


def test_resampled_position_embeddings_match_timm():
    folder, x, static64 = fixture("f_tiny_cls_token_at64", "logits_static64")
    model = load_model(folder / "model.safetensors", img_size=64, num_heads=2)
    assert torch.equal(model.pos_embed.detach(), load_file(folder / "pos_embed_16x16.safetensors")["pos_embed"])
    assert max_diff(logits(model, x), static64) <= TOL
    dynamic = load_model(folder / "model.safetensors", num_heads=2, dynamic_img_size=True)
    assert max_diff(logits(dynamic, x), load_file(folder / "logits.safetensors")["logits"]) <= TOL


def test_non_square_grid():
    folder, _, _ = fixture("a_tiny_cls_token")
    model = load_model(folder / "model.safetensors", num_heads=2, img_size=(32, 48))
    stored = load_file(folder / "model.safetensors")["pos_embed"]
    assert torch.equal(model.pos_embed.detach(), resample_abs_pos_embed(stored, (8, 12), (8, 8), 1))
    assert logits(model, torch.randn(1, 3, 32, 48)).shape == (1, 10)


def test_patch_embed_resample_keeps_tokens():
    """FlexiViT: a patch upsampled 4->8 px through the resampled kernel gives the same token."""
    torch.manual_seed(0)
    w, patch = torch.randn(16, 3, 4, 4), torch.randn(5, 3, 4, 4)
    w8 = resample_patch_embed(w, (8, 8))
    big = F.interpolate(patch, size=(8, 8), mode="bicubic", antialias=True)
    assert w8.shape == (16, 3, 8, 8)
    assert max_diff(F.conv2d(big, w8), F.conv2d(patch, w)) <= 1e-4
    model = load_model(FIXTURES / "a_tiny_cls_token" / "model.safetensors", num_heads=2, patch_size=8,
                       img_size=64)  # same 8x8 grid, bigger patches
    assert model.patch_embed.proj.weight.shape == (64, 3, 8, 8) and model.pos_embed.shape == (1, 65, 64)


def test_new_num_classes_gets_a_fresh_head():
    folder, _, _ = fixture("a_tiny_cls_token")
    model = load_model(folder / "model.safetensors", num_heads=2, num_classes=3)
    stored = load_file(folder / "model.safetensors")
    assert model.head.weight.shape == (3, 64) and torch.equal(model.norm.weight.detach(), stored["norm.weight"])


# --- Hugging Face --------------------------------------------------------------------------
@pytest.mark.parametrize("config", [{}, {"qkv_bias": False, "layer_norm_eps": 1e-6}])
def test_hf_classifier_parity(transformers, tmp_path, config):
    hf = hf_classifier(transformers, **config, id2label={i: f"c{i}" for i in range(5)})
    hf.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 24, 24)
    model = load_model(tmp_path)
    assert model.blocks[0].norm1.eps == hf.config.layer_norm_eps and model.blocks[0].attn.num_heads == 4
    assert (model.blocks[0].attn.qkv.bias is not None) == hf.config.qkv_bias
    assert model.checkpoint_meta["classes"] == [f"c{i}" for i in range(5)]
    with torch.no_grad():
        assert max_diff(logits(model, x), hf(pixel_values=x).logits) <= TOL


def test_hf_vitmodel_pooler_is_pre_logits(transformers, tmp_path):
    torch.manual_seed(1)
    hf = transformers.ViTModel(transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                      intermediate_size=128, image_size=16, patch_size=4)).eval()
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    assert model.num_classes == 0 and isinstance(model.pre_logits.act, torch.nn.Tanh)
    with torch.no_grad():
        assert max_diff(logits(model, x), hf(pixel_values=x).pooler_output) <= TOL


@pytest.mark.parametrize("name", ["vit_mini_patch4_28", "sl_vit_mini_patch4_28", "vit_hybrid_resnet_mini_28"])
def test_a_timm_file_written_by_vitkit_names_its_model(name, tmp_path):
    """Width 128 with 4 heads (not the width/64 guess), SL-ViT and a hybrid load from the file alone."""
    torch.manual_seed(0)
    model = vitkit.create_model(name, num_classes=7).eval()
    save_timm(model, tmp_path / "w.safetensors")
    assert set(load_file(tmp_path / "w.safetensors")) == set(model.state_dict())  # timm's reader sees tensors only
    back = load_model(tmp_path / "w.safetensors").eval()
    assert type(back) is type(model)
    assert {k: back.build_spec.kwargs.get(k) for k in model.build_spec.kwargs} == model.build_spec.kwargs  # plus defaults
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert max_diff(back(x), model(x)) == 0


def test_hf_preprocessor_config_with_one_number_for_all_channels(transformers, tmp_path):
    hf = transformers.ViTModel(transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                      intermediate_size=128, image_size=16, patch_size=4))
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": 0.5, "image_std": 0.25}')
    meta = load_model(tmp_path).checkpoint_meta
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3


def test_vitkit_to_hf_to_vitkit(transformers, tmp_path):
    torch.manual_seed(2)
    model = vitkit.create_model("vit_mini_patch4_28").eval()  # 4 heads: not the width/64 guess
    save_hf(model, tmp_path / "hf", classes=[str(i) for i in range(10)])
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    back = load_model(tmp_path / "hf")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert max_diff(hf(pixel_values=x).logits, logits(model, x)) <= TOL
    assert max_diff(logits(back, x), logits(model, x)) == 0
    assert back.checkpoint_meta["classes"] == [str(i) for i in range(10)]


def test_npz_to_hf(transformers, tmp_path):
    folder, x, expected = fixture("npz_original_tiny")
    convert(folder / "model.npz", tmp_path / "hf", to="hf")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert max_diff(hf(pixel_values=x).logits, expected) <= TOL


def test_hf_export_refuses_what_hf_cannot_express():
    model = load_model(FIXTURES / "b_tiny_avgpool_noclstoken" / "model.safetensors", num_heads=2)
    with pytest.raises(VitkitError, match="averaging"):
        save_hf(model, "unused")
    with pytest.raises(VitkitError, match="fc_norm"):  # HF's ViT has no place for it: it would be dropped
        save_hf(vitkit.create_model("vit_mini_patch4_28", fc_norm=True), "unused")


# --- timm and vitkit checkpoints -------------------------------------------------------------
def test_vitkit_to_timm_to_vitkit(tmp_path):
    torch.manual_seed(3)
    model = vitkit.create_model("vit_mini_patch4_28", init_values=0.1, qkv_bias=False).eval()
    x = torch.randn(2, 1, 28, 28)
    for file in ("w.safetensors", "w.pth"):
        save_timm(model, tmp_path / file)
        back = load_model(tmp_path / file, "vit_mini_patch4_28")  # the name supplies the 4 heads
        assert torch.equal(back.blocks[1].ls2.gamma, model.blocks[1].ls2.gamma) and back.blocks[0].attn.qkv.bias is None
        assert max_diff(logits(back, x), logits(model, x)) == 0


def test_attention_pooling_is_read_from_timm_names(tmp_path):
    torch.manual_seed(3)
    model = vitkit.create_model("vit_mini_patch4_28", class_token=False, global_pool="map").eval()
    save_timm(model, tmp_path / "w.safetensors")
    back = load_model(tmp_path / "w.safetensors", num_heads=4)
    assert back.global_pool == "map" and back.cls_token is None
    x = torch.randn(2, 1, 28, 28)
    assert max_diff(logits(back, x), logits(model, x)) == 0


def test_vitkit_checkpoint_folder(tmp_path):
    torch.manual_seed(4)
    model = vitkit.create_model("vit_mini_patch4_28").eval()
    save_vitkit(model, tmp_path / "ck", classes=list("abcdefghij"), mean=[0.5], std=[0.5])
    back = vitkit.create_model(checkpoint=tmp_path / "ck")
    x = torch.randn(2, 1, 28, 28)
    assert back.build_spec.name == "vit_mini_patch4_28" and back.checkpoint_meta["mean"] == [0.5]
    assert max_diff(logits(back, x), logits(model, x)) == 0
    convert(tmp_path / "ck", tmp_path / "hf", to="hf")  # class names travel on
    assert load_model(tmp_path / "hf").checkpoint_meta["classes"] == list("abcdefghij")


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer random (BatchNorm statistics too), so a round trip cannot pass by chance."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    return model.eval()


def test_vitkit_checkpoint_of_a_resnet(tmp_path):
    """A non-ViT has no architecture to infer: the checkpoint's name and keyword arguments rebuild it."""
    model = _randomised(vitkit.create_model("resnet_mini_28"))
    save_vitkit(model, tmp_path / "cnn", classes=list("abcdefghij"))
    back = load_model(tmp_path / "cnn")
    x = torch.randn(2, 1, 28, 28)
    assert type(back).__name__ == "ResNet" and back.build_spec.name == "resnet_mini_28"
    assert back.checkpoint_meta["classes"] == list("abcdefghij")
    assert max_diff(logits(back, x), logits(model, x)) == 0
    fresh = vitkit.create_model(checkpoint=tmp_path / "cnn", num_classes=3)  # new classes: a fresh fc
    assert fresh.fc.out_features == 3 and torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_resnet_checkpoint_shape_mismatch_names_tensor(tmp_path):
    save_vitkit(vitkit.create_model("resnet_mini_28"), tmp_path / "cnn")
    with pytest.raises(VitkitError, match=r"cnn: tensor conv1\.weight has shape \(32, 1, 3, 3\).*\(16, 1, 3, 3\)"):
        load_model(tmp_path / "cnn", stem_width=16)


def test_resnet_built_by_hand_cannot_be_described(tmp_path):
    from vitkit.models import ResNet
    with pytest.raises(VitkitError, match="ResNet built by hand"):
        save_vitkit(ResNet(layers=(1,), widths=(8,)), tmp_path / "cnn")
    assert not (tmp_path / "cnn" / "model.safetensors").exists()


def test_wrapped_state_dict_with_module_prefix(tmp_path):
    folder, x, expected = fixture("a_tiny_cls_token")
    sd = load_file(folder / "model.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ck.bin")
    assert max_diff(logits(load_model(tmp_path / "ck.bin", num_heads=2), x), expected) <= TOL


def _save_as_timm_does(model: torch.nn.Module, path: Path) -> None:
    """timm's files hold tensors only: vitkit's header naming the model is left out."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def test_head_count_guess_and_refusal(tmp_path):
    _save_as_timm_does(vitkit.create_model("vit_mini_patch4_28"), tmp_path / "d128.safetensors")
    with pytest.warns(UserWarning, match=r"do not store the number of attention heads; assuming 2 \(heads 64 wide"):
        assert load_model(tmp_path / "d128.safetensors").blocks[0].attn.num_heads == 2  # 128 / 64
    _save_as_timm_does(vitkit.create_model("vit_mini_patch4_28", embed_dim=96, num_heads=4), tmp_path / "d96.safetensors")
    with pytest.raises(VitkitError, match="num_heads"):
        load_model(tmp_path / "d96.safetensors")
    assert load_model(tmp_path / "d96.safetensors", num_heads=4).blocks[0].attn.num_heads == 4
    _save_as_timm_does(vitkit.create_model("vit_mini_patch4_28", embed_dim=1280, depth=1, num_heads=16),
                       tmp_path / "d1280.safetensors")
    with pytest.warns(UserWarning, match=r"assuming 16 \(as the ViT/DeiT size of width 1280"):  # ViT-H's width: 16 heads of 80, not 1280 / 64
        assert load_model(tmp_path / "d1280.safetensors").blocks[0].attn.num_heads == 16


@pytest.mark.parametrize("length_bytes", [b"\x80", b"PK"])
def test_a_safetensors_header_length_that_looks_like_a_pickle_or_zip_is_still_read_as_safetensors(tmp_path,
                                                                                                  length_bytes):
    """The 8-byte header length comes first: 1 file in 32 starts with 0x80 (a pickle's first byte), and a
    header of 19,280 bytes starts with "PK" (a zip's)."""
    from vitkit.weights.files import sniff
    model = vitkit.create_model("vit_mini_patch4_28").eval()

    def save(n: int) -> Path:
        return save_timm(model, tmp_path / "w.safetensors", {"classes": ["c" * n] + list("123456789")})

    def header_length(n: int) -> int:
        return int.from_bytes(save(n).read_bytes()[:8], "little")

    want = int.from_bytes(length_bytes, "little")
    while want < header_length(1):  # the smallest header length that starts with these bytes
        want += 256 ** len(length_bytes)
    n = 1 + want - header_length(1)  # each character of the name adds one byte; padding rounds to 8
    n = next(m for m in range(max(1, n - 8), n + 9) if header_length(m) == want)
    path = save(n)
    assert path.read_bytes()[:len(length_bytes)] == length_bytes and sniff(path) == "safetensors"
    back = load_model(path)
    assert back.blocks[0].attn.num_heads == 4 and back.checkpoint_meta["classes"][0] == "c" * n


def test_a_name_the_weights_contradict_is_warned_of(tmp_path):
    save_timm(vitkit.create_model("vit_mini_patch4_28"), tmp_path / "mini.safetensors")
    with pytest.warns(UserWarning, match=r"not vit_small_patch16_224's size \(embed_dim 384 vs 128; depth 12 vs 6"):
        model = load_model(tmp_path / "mini.safetensors", "vit_small_patch16_224")
    assert model.embed_dim == 128  # the tensors decide the sizes

def test_a_pth_of_an_sl_vit_asks_for_its_name(tmp_path):
    """A .pth keeps tensors only, and SL-ViT's linear patch projection does not show the patch size."""
    model = vitkit.create_model("sl_vit_mini_patch4_28").eval()
    save_timm(model, tmp_path / "sl.pth")
    with pytest.raises(VitkitError, match=r"sl\.pth: the weights do not say their patch size.*model name"):
        load_model(tmp_path / "sl.pth")
    back = load_model(tmp_path / "sl.pth", name="sl_vit_mini_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), model(x))


# --- big_vision .npz (built from the original-layout fixture) ----------------------------------
def _big_vision_arrays(scan: bool) -> dict[str, np.ndarray]:
    """The fixture in big_vision's layout: new sub-layer names, params/ prefix, [class] outside the posemb."""
    z = dict(np.load(FIXTURES / "npz_original_tiny" / "model.npz"))
    pos = z.pop("Transformer/posembed_input/pos_embedding")
    z["cls"] = z["cls"] + pos[:, :1]
    z["pos_embedding"] = pos[:, 1:]
    for old, new in (("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
                     ("LayerNorm_2", "LayerNorm_1"), ("MlpBlock_3", "MlpBlock_0")):
        z = {k.replace(old, new): v for k, v in z.items()}
    if scan:
        blocks = sorted({k.split("/")[1] for k in z if "encoderblock_" in k})
        leaves = {k.split("/", 2)[2] for k in z if "encoderblock_" in k}
        for leaf in leaves:
            z[f"Transformer/encoderblock/{leaf}"] = np.stack([z.pop(f"Transformer/{b}/{leaf}") for b in blocks])
    return {f"params/{k}": v for k, v in z.items()} | {"opt/state/count": np.zeros(())}


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_npz(tmp_path, scan):
    _, x, expected = fixture("npz_original_tiny")
    np.savez(tmp_path / "bv.npz", **_big_vision_arrays(scan))
    assert max_diff(logits(load_model(tmp_path / "bv.npz"), x), expected) <= TOL


# --- bad input ---------------------------------------------------------------------------------
def test_shape_mismatch_names_tensor_and_shapes():
    path = FIXTURES / "a_tiny_cls_token" / "model.safetensors"
    with pytest.raises(VitkitError, match=r"model\.safetensors.*blocks\.0\.mlp\.fc1\.weight.*\(256, 64\).*\(128, 64\)"):
        load_model(path, num_heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz"])
def test_truncated_file_is_named(tmp_path, suffix):
    folder = FIXTURES / "a_tiny_cls_token"
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(load_file(folder / "model.safetensors"), full)
    elif suffix == ".npz":
        full.write_bytes((FIXTURES / "npz_original_tiny" / "model.npz").read_bytes())
    else:
        full.write_bytes((folder / "model.safetensors").read_bytes())
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(VitkitError, match=str(cut).replace(".", r"\.")):
        load_model(cut, num_heads=2)


def test_not_a_weights_file(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(VitkitError, match="notes.pth: not a weights file"):
        load_model(tmp_path / "notes.pth")
    save_file({"encoder.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(VitkitError, match="other.safetensors: no ViT weights"):
        load_model(tmp_path / "other.safetensors")


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"patch_embed.proj.weight": torch.zeros(1), "x": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(VitkitError, match="evil.pth: refused"):
        load_model(path)
    assert not marker.exists()


def test_folder_without_config_or_of_another_model(tmp_path):
    with pytest.raises(VitkitError, match="config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "swin"}')
    with pytest.raises(VitkitError, match="model_type 'swin' is not supported yet"):
        read_checkpoint(tmp_path)
