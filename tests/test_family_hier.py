"""The hierarchical ViTs (Swin, PVT v2, PiT) against timm's own outputs and parameter counts."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.inference import prepare_for_inference
from vitkit.models import model_param_count
from vitkit.models.pit import PoolingVisionTransformer
from vitkit.models.pvt_v2 import PyramidVisionTransformerV2
from vitkit.models.swin import SwinTransformer, resample_relative_position_bias_table, shifted_window_mask
from vitkit.weights import load_model, save_vitkit

ORACLES = {  # fixture folder: (our class, a registered name of the same family)
    "swin_tiny_w4": (SwinTransformer, "swin_tiny_patch4_window7_224"),
    "pvt_v2_tiny": (PyramidVisionTransformerV2, "pvt_v2_b0"),
    "pit_tiny": (PoolingVisionTransformer, "pit_ti_224"),
}
MINIS = ["swin_mini_patch2_window7_28", "pvt_v2_mini_28", "pit_mini_28"]


def oracle(fixtures_dir, folder):
    path = fixtures_dir / "family" / folder
    cfg = json.loads((path / "config.json").read_text())
    x = load_file(path / "input.safetensors")["input"]
    return path, cfg, x, load_file(path / "logits.safetensors")["logits"]


@pytest.mark.parametrize("folder", ORACLES)
def test_reproduces_timm_logits(fixtures_dir, folder):
    path, cfg, x, logits = oracle(fixtures_dir, folder)
    model = ORACLES[folder][0](**cfg["kwargs"]).eval()
    model.load_state_dict(load_file(path / "weights.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("folder", ORACLES)
def test_full_size_param_counts_equal_timm(fixtures_dir, folder):
    counts = oracle(fixtures_dir, folder)[1]["full_size_param_counts"]
    assert {name: model_param_count(name) for name in counts} == counts


@pytest.mark.parametrize("folder", ORACLES)
def test_create_model_loads_a_timm_file_by_name(fixtures_dir, folder):
    """A timm state dict loads through create_model(name, checkpoint=...), head and all (Swin's is head.fc)."""
    path, cfg, x, logits = oracle(fixtures_dir, folder)
    model = vitkit.create_model(ORACLES[folder][1], checkpoint=path / "weights.safetensors", **cfg["kwargs"]).eval()
    assert type(model) is ORACLES[folder][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MINIS)
def test_small_variants_are_small_and_keep_their_spec_through_a_checkpoint(name, tmp_path):
    assert 500_000 <= model_param_count(name) <= 1_500_000  # vit_mini_patch4_28's scale
    model = vitkit.create_model(name).eval()
    save_vitkit(model, tmp_path / "m")
    back = load_model(tmp_path / "m").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


@pytest.mark.slow  # five training steps each; 20-30 s on the shared 2-core box under load
@pytest.mark.parametrize("name", MINIS)
def test_small_variant_learns_a_batch(name):
    model = vitkit.create_model(name, drop_path_rate=0.0).train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name, channels, sizes", [
    ("swin_mini_patch2_window7_28", [64, 128], [14, 7]),
    ("pvt_v2_mini_28", [48, 96, 192], [7, 4, 2]),
    ("pit_mini_28", [64, 128], [13, 7]),
])
def test_forward_intermediates_are_the_stage_maps(name, channels, sizes):
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape for m in maps] == [(2, c, s, s) for c, s in zip(channels, sizes)]
        torch.testing.assert_close(final, model.forward_features(x))
        last = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
        assert len(last) == 1 and last[0].shape == (2, sizes[-1], sizes[-1], channels[-1])
        torch.testing.assert_close(last[0].permute(0, 3, 1, 2), maps[-1])
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True)
        torch.testing.assert_close(first[0], maps[0])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[len(channels)])


@pytest.mark.parametrize("name", MINIS)
def test_reset_classifier_records_the_new_head(name):
    model = vitkit.create_model(name).eval()
    model.reset_classifier(3, zero_init=True)
    assert model.build_spec.kwargs["num_classes"] == 3 and model.num_classes == 3
    assert torch.count_nonzero(model(torch.randn(2, 1, 28, 28))) == 0
    rebuilt = vitkit.create_model(model.build_spec.name, **model.build_spec.kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_swin_head_without_pooling_is_recorded():
    model = vitkit.create_model("swin_mini_patch2_window7_28")
    model.reset_classifier(0, global_pool="")
    assert model.build_spec.kwargs["global_pool"] == "" and model(torch.randn(1, 1, 28, 28)).shape == (1, 7, 7, 128)


def test_swin_shift_mask_keeps_rolled_in_tokens_apart():
    """4x4 map, window 2, shift 1: after rolling by -1 the last window row/column mixes the map's far
    edges; a token may attend only to tokens that were neighbours before the roll."""
    mask = shifted_window_mask((4, 4), (2, 2), (1, 1))
    assert mask.shape == (4, 4, 4)
    assert torch.count_nonzero(mask[0]) == 0  # the top-left window is untouched by the roll
    # bottom-right window after the roll: tokens from (3,3), (3,0), (0,3), (0,0): four separate regions
    assert (mask[3] == -100).sum() == 12 and torch.count_nonzero(mask[3].diagonal()) == 0


def test_swin_loads_at_another_window_with_its_bias_tables_resampled(fixtures_dir):
    path, cfg, _, _ = oracle(fixtures_dir, "swin_tiny_w4")
    kwargs = {**cfg["kwargs"], "img_size": 64, "window_size": 8}
    model = vitkit.create_model("swin_tiny_patch4_window7_224", checkpoint=path / "weights.safetensors",
                                **kwargs).eval()
    table = load_file(path / "weights.safetensors")["layers.0.blocks.1.attn.relative_position_bias_table"]
    got = model.layers[0].blocks[1].attn.relative_position_bias_table
    assert got.shape == (15 * 15, 2)
    torch.testing.assert_close(got, resample_relative_position_bias_table(table, (8, 8)))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_relative_bias_resampling_is_bicubic_on_the_offset_grid():
    table = torch.randn(7 * 7, 3)
    assert resample_relative_position_bias_table(table, (4, 4)) is table  # same window: untouched
    flat = torch.full((7 * 7, 2), 0.5)
    torch.testing.assert_close(resample_relative_position_bias_table(flat, (6, 6)), torch.full((11 * 11, 2), 0.5))
    ramp = torch.arange(7.0).repeat(7)[:, None]  # bias growing with dx, the same for every dy
    out = resample_relative_position_bias_table(ramp, (2, 2)).reshape(3, 3)
    assert torch.allclose(out[0], out[2]) and out[0, 0] < out[0, 1] < out[0, 2]


def test_swin_takes_other_sizes_when_not_strict():
    model = vitkit.create_model("swin_mini_patch2_window7_28", strict_img_size=False).eval()
    assert model(torch.randn(1, 1, 36, 44)).shape == (1, 10)  # 18x22 tokens: windows padded, mask per call


def test_pit_resamples_its_position_map_and_refuses_other_inputs(fixtures_dir):
    path, cfg, _, _ = oracle(fixtures_dir, "pit_tiny")
    model = vitkit.create_model("pit_ti_224", checkpoint=path / "weights.safetensors",
                                **{**cfg["kwargs"], "img_size": 48}).eval()
    assert model.pos_embed.shape == (1, 32, 23, 23)  # (48 - 4) / 2 + 1
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match="expects 48x48 input"):
        model(torch.randn(1, 3, 32, 32))


def test_pvt_v2_takes_any_input_size(fixtures_dir):
    path, cfg, _, _ = oracle(fixtures_dir, "pvt_v2_tiny")
    model = PyramidVisionTransformerV2(**cfg["kwargs"]).eval()
    model.load_state_dict(load_file(path / "weights.safetensors"), strict=True)
    assert model(torch.randn(1, 3, 64, 48)).shape == (1, 10)


def test_pit_distilled_returns_both_heads_when_training_with_a_teacher():
    model = vitkit.create_model("pit_mini_28", distilled=True)
    model.set_distilled_training(True)
    cls, dist = model.train()(torch.randn(2, 1, 28, 28))
    assert cls.shape == dist.shape == (2, 10)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 28, 28))
        torch.testing.assert_close(model.forward_head(feats),
                                   (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2)


@pytest.mark.parametrize("name", MINIS)
def test_bf16_inference_stays_close_to_fp32(name):
    model = vitkit.create_model(name).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    got = prepare_for_inference(model, precision="bf16")(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05 * float(ref.abs().max()) + 0.02, rtol=0.05)


def test_window_attention_distance_in_pixels():
    """Uniform attention (q = k = 0, no bias) over a whole 7x7 window is the mean pairwise distance of its
    token centres: 2 px apart in stage 0 (patch 2), 4 px in stage 1; a shifted block's mask keeps it below."""
    from vitkit.explain import patch_distances, window_attention_distance
    model = vitkit.create_model("swin_mini_patch2_window7_28").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.qkv.weight", "attn.qkv.bias", "relative_position_bias_table")):
                p.zero_()
    got = window_attention_distance(model, [torch.randn(2, 1, 28, 28)])
    assert [d.shape for d in got] == [(2,)] * 2 + [(4,)] * 4
    for block, px in ((0, 2), (2, 4), (5, 4)):
        np.testing.assert_allclose(got[block], float(patch_distances((7, 7), (px, px)).mean()), rtol=1e-6)
    assert (got[1] < float(patch_distances((7, 7), (2, 2)).mean())).all()  # shifted: smaller regions


def test_explain_refuses_a_model_without_windows():
    from vitkit.errors import VitkitError
    from vitkit.explain import window_attention_distance
    with pytest.raises(VitkitError, match="Swin"):
        window_attention_distance(vitkit.create_model("pit_mini_28"), [torch.randn(1, 1, 28, 28)])
