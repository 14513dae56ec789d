"""The survey's token-based ViT family: DeiT III, CaiT, ConViT, CrossViT.

Oracles: timm's own models (tests/fixtures/family: perturbed weights, inputs and logits, exact
constructor keywords, full-size parameter counts), and the papers' formulas recomputed by hand.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.explain import attention_maps, attention_rollout, class_attention, mean_attention_distance
from vitkit.explain.tokens import full_attention
from vitkit.inference import prepare_for_inference
from vitkit.models import VisionTransformer, model_param_count, resample_abs_pos_embed
from vitkit.models.cait import Cait
from vitkit.models.convit import GPSA, ConVit, relative_indices
from vitkit.models.crossvit import CrossVit
from vitkit.weights import load_model, save_vitkit
from vitkit.weights.infer import infer_kwargs

ORACLES = {"deit3_tiny": VisionTransformer, "cait_tiny": Cait, "convit_tiny_l2": ConVit, "crossvit_tiny": CrossVit}
# a registered name of each family, to load the fixture's timm file under (its kwargs override the sizes)
NAMES = {"deit3_tiny": "deit3_small_patch16_224", "cait_tiny": "cait_xxs24_224", "convit_tiny_l2": "convit_tiny",
         "crossvit_tiny": "crossvit_9_240"}
MINIS = ["deit3_mini_patch4_28", "cait_mini_patch4_28", "convit_mini_patch4_28", "crossvit_mini_28"]


def oracle(fixtures_dir, folder):
    d = fixtures_dir / "family" / folder
    cfg = json.loads((d / "config.json").read_text())
    return (cfg, load_file(d / "weights.safetensors"), load_file(d / "input.safetensors")["input"],
            load_file(d / "logits.safetensors")["logits"])


def oracle_model(fixtures_dir, folder):
    cfg, sd, x, logits = oracle(fixtures_dir, folder)
    model = ORACLES[folder](**cfg["kwargs"]).eval()
    model.load_state_dict(sd, strict=True)
    return model, x, logits


# --- the models against timm -----------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ORACLES)
def test_timm_weights_load_strictly_and_give_timms_logits(fixtures_dir, folder):
    model, x, logits = oracle_model(fixtures_dir, folder)
    with torch.no_grad():
        out = model(x)
    assert out.shape == logits.shape
    assert torch.allclose(out, logits, atol=1e-5, rtol=0)
    assert logits.abs().max() > 0.1  # the perturbed weights give logits far from zero: the check can fail


@pytest.mark.parametrize("folder", ORACLES)
def test_full_size_parameter_counts_equal_timms(fixtures_dir, folder):
    counts = oracle(fixtures_dir, folder)[0]["full_size_param_counts"]
    assert {name: model_param_count(name) for name in counts} == counts


@pytest.mark.parametrize("folder", ORACLES)
def test_create_model_loads_the_timm_file_under_a_registered_name(fixtures_dir, folder):
    cfg, _, x, logits = oracle(fixtures_dir, folder)
    path = fixtures_dir / "family" / folder / "weights.safetensors"
    model = vitkit.create_model(NAMES[folder], checkpoint=path, **cfg["kwargs"]).eval()
    assert type(model) is ORACLES[folder]
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5, rtol=0)


def test_deit3_file_loads_without_a_name_its_layout_read_off_the_tensors(fixtures_dir):
    cfg, sd, x, logits = oracle(fixtures_dir, "deit3_tiny")
    found = infer_kwargs(sd, "deit3")
    assert found["no_embed_class"] is True and found["init_values"] and found["img_size"] == 32
    model = vitkit.create_model(checkpoint=fixtures_dir / "family/deit3_tiny/weights.safetensors", num_heads=2).eval()
    assert model.no_embed_class and model.pos_embed.shape == (1, 64, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5, rtol=0)


def test_pos_embed_length_tells_whether_class_has_one():
    sd = {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 4, 4),
          "blocks.0.attn.qkv.weight": torch.zeros(24, 8), "blocks.0.mlp.fc1.weight": torch.zeros(32, 8)}
    assert infer_kwargs({**sd, "pos_embed": torch.zeros(1, 64, 8)}, "f")["no_embed_class"] is True
    vit = infer_kwargs({**sd, "pos_embed": torch.zeros(1, 65, 8)}, "f")
    assert vit["no_embed_class"] is False and vit["img_size"] == 32
    not_square = infer_kwargs({**sd, "pos_embed": torch.zeros(1, 2 * 3 + 1, 8)}, "f")
    assert not_square["no_embed_class"] is False and "img_size" not in not_square


@pytest.mark.parametrize("folder, name", [("cait_tiny", "cait"), ("convit_tiny_l2", "convit"),
                                          ("crossvit_tiny", "crossvit")])
def test_a_family_file_without_its_name_is_a_clear_error(fixtures_dir, folder, name):
    with pytest.raises(VitkitError, match=f"{name}_\\*.*pass the model name"):
        vitkit.create_model(checkpoint=fixtures_dir / "family" / folder / "weights.safetensors")


def test_deit3_at_another_size_resamples_only_the_patch_embeddings(fixtures_dir):
    cfg, sd, _, _ = oracle(fixtures_dir, "deit3_tiny")
    dynamic = VisionTransformer(**cfg["kwargs"], dynamic_img_size=True).eval()
    dynamic.load_state_dict(sd)
    static = vitkit.create_model(checkpoint=fixtures_dir / "family/deit3_tiny/weights.safetensors",
                                 **{**cfg["kwargs"], "img_size": 64}).eval()
    # timm's rule for no_embed_class: the grid is resampled with no prefix entries kept apart
    assert torch.equal(static.pos_embed.detach(), resample_abs_pos_embed(sd["pos_embed"], (16, 16), (8, 8), 0))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(dynamic(x), static(x), atol=1e-5)


def test_vitkit_checkpoint_round_trip_rebuilds_nested_keywords(tmp_path):
    model = vitkit.create_model("crossvit_mini_28").eval()
    save_vitkit(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert type(again) is CrossVit and torch.equal(model(x), again(x))


# --- the registry -----------------------------------------------------------------------------------------
def test_registered_names():
    names = set(vitkit.list_models())
    assert {"deit3_small_patch16_224", "deit3_base_patch16_224", "deit3_large_patch16_384", "cait_xxs24_224",
            "cait_xxs36_224", "cait_xs24_384", "cait_s24_224", "convit_tiny", "convit_small", "convit_base",
            "crossvit_tiny_240", "crossvit_small_240", "crossvit_9_240", *MINIS} <= names


@pytest.mark.parametrize("name", MINIS)
def test_small_variants_take_28px_grayscale_at_vit_minis_size(name):
    model = vitkit.create_model(name).eval()
    assert 0.5e6 < model_param_count(name) < 1.5e6
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_a_small_variant_learns():
    torch.manual_seed(0)
    model = vitkit.create_model("convit_mini_patch4_28").train()
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# --- classifier contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MINIS[1:])
def test_reset_classifier_records_the_change(name):
    model = vitkit.create_model(name)
    model.reset_classifier(3, global_pool="avg", zero_init=True)
    assert model.build_spec.kwargs["num_classes"] == 3 and model.build_spec.kwargs["global_pool"] == "avg"
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3) and torch.count_nonzero(out) == 0  # zero head: zero logits
    assert model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)), pre_logits=True).shape == \
        (2, model.num_features)
    assert "pos_embed" in "".join(model.no_weight_decay())
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="map")


# --- forward_intermediates ------------------------------------------------------------------------------
def _patch_tokens(model, x):
    """forward_features' patch tokens of the last block (after the final norm), per token sequence."""
    feats = model.forward_features(x)
    return [t[:, 1:] for t in feats] if isinstance(feats, list) else [feats[:, model.num_prefix_tokens:]]


@pytest.mark.parametrize("name", ["vit_mini_patch4_28", "deit_mini_distilled_patch4_28", *MINIS])
def test_last_intermediate_is_forward_features_patch_tokens(name):
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True)
        expected = _patch_tokens(model, x)
        last = maps[-1] if isinstance(maps[-1], tuple) else (maps[-1],)
        for fmap, tokens in zip(last, expected):
            b, d, h, w = fmap.shape
            assert (b, d, h * w) == (2, tokens.shape[-1], tokens.shape[1])
            assert torch.allclose(fmap.flatten(2).transpose(1, 2), tokens, atol=1e-6)
        feats = model.forward_features(x)
        assert all(torch.equal(a, b) for a, b in zip(final if isinstance(final, list) else [final],
                                                      feats if isinstance(feats, list) else [feats]))


def test_intermediates_before_the_norm_and_block_selection():
    model = vitkit.create_model("deit3_mini_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        raw = model.blocks(model.embed(x))[:, 1:]
        assert len(maps) == 6 and torch.allclose(maps[-1].flatten(2).transpose(1, 2), raw, atol=1e-6)
        two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
    assert torch.equal(two[0], maps[4]) and torch.equal(two[1], maps[5])
    assert picked[0].shape == (2, 49, 128) and torch.equal(picked[1], maps[5].flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[6])


# --- explain ------------------------------------------------------------------------------------------------
def test_full_attention_keeps_absent_and_silent_tokens_in_place():
    cls_row = torch.tensor([[[[0.5, 0.25, 0.25]]]])  # one query over 3 tokens
    full = full_attention(cls_row, 3)
    assert torch.equal(full[0, 0], torch.tensor([[0.5, 0.25, 0.25], [0, 1, 0], [0, 0, 1.0]]))
    patches = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]])  # [class] not yet in the sequence
    assert torch.equal(full_attention(patches, 3)[0, 0], torch.tensor([[1, 0, 0], [0, 0.75, 0.25], [0, 0.5, 0.5]]))


def test_cait_explain_reads_its_class_attention():
    model = vitkit.create_model("cait_mini_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    maps = attention_maps(model, x)  # the 2 class-attention layers over [class] + 49 patches
    assert maps.shape == (2, 2, 4, 50, 50)
    with torch.no_grad():  # the first layer's [class] row, recomputed from q, k by hand
        patches = model.blocks(model.forward_patches(x))
        u = model.blocks_token_only[0].norm1(torch.cat((model.cls_token.expand(2, -1, -1), patches), dim=1))
        attn = model.blocks_token_only[0].attn
        q = attn.q(u[:, :1]).reshape(2, 1, 4, 32).transpose(1, 2)
        k = attn.k(u).reshape(2, 50, 4, 32).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1)
    assert torch.allclose(maps[0][:, :, :1], expected, atol=1e-6)
    assert torch.equal(maps[0][:, :, 1:], torch.eye(50)[1:].expand(2, 4, 49, 50))  # patches keep themselves
    # rollout through two class-attention layers, closed form (Â = ½A + ½I on the [class] row):
    a1, a2 = maps[0].mean(1)[:, 0], maps[1].mean(1)[:, 0]
    expected_row = 0.25 * a2[:, :1] * a1[:, 1:] + 0.5 * a2[:, 1:] + 0.25 * a1[:, 1:]
    assert torch.allclose(attention_rollout(model, x).flatten(1), expected_row, atol=1e-6)
    assert class_attention(model, x).shape == (2, 2, 4, 7, 7)
    with pytest.raises(VitkitError, match="class attention"):
        mean_attention_distance(model, [x])


def test_convit_explain_hands_the_gated_attention():
    model = vitkit.create_model("convit_mini_patch4_28").eval()
    with torch.no_grad():  # gates away from their start, so both parts count
        for m in model.modules():
            if isinstance(m, GPSA):
                m.gating_param.copy_(torch.tensor([-2.0, -0.5, 0.5, 2.0]))
    x = torch.randn(2, 1, 28, 28)
    maps = attention_maps(model, x)
    assert maps.shape == (6, 2, 4, 50, 50)
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed
        block = model.blocks[0]
        h = block.norm1(tokens)
        q, k = block.attn.qk(h).reshape(2, 49, 2, 4, 32).permute(2, 0, 3, 1, 4)
        content = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1)
        position = torch.softmax(block.attn.pos_proj(relative_indices((7, 7))).permute(0, 3, 1, 2), dim=-1)
        gate = torch.sigmoid(block.attn.gating_param).view(1, 4, 1, 1)
        mixed = (1 - gate) * content + gate * position
    assert torch.allclose(maps[0][:, :, 1:, 1:], mixed / mixed.sum(-1, keepdim=True), atol=1e-6)
    assert torch.all(maps[0][:, :, 1:, 0] == 0)  # [class] has not joined yet
    assert attention_rollout(model, x).shape == (2, 7, 7) and mean_attention_distance(model, [x]).shape == (6, 4)


def test_deit3_explains_as_a_vit_and_crossvit_is_a_clear_error():
    x = torch.randn(2, 1, 28, 28)
    assert attention_rollout(vitkit.create_model("deit3_mini_patch4_28").eval(), x).shape == (2, 7, 7)
    with pytest.raises(VitkitError, match="one per patch size"):
        attention_rollout(vitkit.create_model("crossvit_mini_28").eval(), x)


# --- inference ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MINIS)
def test_bf16_inference_is_close_to_fp32(name):
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    out = prepare_for_inference(model, "bf16")(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
