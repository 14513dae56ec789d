"""DeiT's distilled ViT: the extra token and head, its weights in timm's and Hugging Face's layouts.

Oracle: ``transformers``' DeiT models (random init + ``save_pretrained``), as for ViT in test_weights.py.
"""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.explain import attention_maps, attention_rollout, class_attention, pos_embed_similarity, rollout
from vitkit.models import DistilledVisionTransformer, VisionTransformer, model_param_count, resample_abs_pos_embed
from vitkit.weights import load_model, save_hf, save_timm

TOL = 1e-5
TINY = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def transformers():
    sys.modules.setdefault("torchvision", None)  # see test_weights.py: the installed torchvision is broken
    import transformers
    return transformers


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- the model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size, dims", [("tiny", (192, 3)), ("small", (384, 6)), ("base", (768, 12))])
def test_param_counts_equal_hf_deit_with_teacher(transformers, size, dims):
    config = transformers.DeiTConfig(hidden_size=dims[0], num_attention_heads=dims[1],
                                     intermediate_size=4 * dims[0], num_labels=1000)
    with torch.device("meta"):
        hf = transformers.DeiTForImageClassificationWithTeacher(config)
    assert model_param_count(f"deit_{size}_distilled_patch16_224") == sum(p.numel() for p in hf.parameters())


def test_registry_names():
    names = vitkit.list_models("deit_*")
    for size in ("tiny", "small", "base"):
        assert {f"deit_{size}_patch16_224", f"deit_{size}_distilled_patch16_224"} <= set(names)
    assert {"deit_base_patch16_384", "deit_base_distilled_patch16_384"} <= set(names)
    for size in ("mini", "tiny", "small"):
        for patch in (4, 7):
            assert {f"deit_{size}_patch{patch}_28", f"deit_{size}_distilled_patch{patch}_28"} <= set(names)
    assert type(vitkit.create_model("deit_tiny_patch4_28")) is VisionTransformer
    student = vitkit.create_model("deit_mini_distilled_patch7_28")
    assert isinstance(student, DistilledVisionTransformer) and student.pos_embed.shape == (1, 2 + 16, 128)


def test_eval_output_is_the_mean_of_both_heads():
    m = DistilledVisionTransformer(**TINY).eval()
    assert m.num_prefix_tokens == 2 and "dist_token" in m.no_weight_decay()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (3, 2 + 64, 64)
        by_hand = (m.head(f[:, 0]) + m.head_dist(f[:, 1])) / 2
        torch.testing.assert_close(m(x), by_hand, atol=TOL, rtol=0)
        torch.testing.assert_close(m.forward_head(f, pre_logits=True), (f[:, 0] + f[:, 1]) / 2)


def test_distilled_training_returns_both_heads():
    m = DistilledVisionTransformer(**TINY)
    x = torch.randn(2, 3, 32, 32)
    assert m.train()(x).shape == (2, 5)  # fine-tuning without a teacher: still the mean
    m.set_distilled_training(True)
    cls, dist = m(x)
    assert cls.shape == dist.shape == (2, 5) and not torch.equal(cls, dist)
    assert m.eval()(x).shape == (2, 5)  # evaluation always averages
    m.reset_classifier(3, zero_init=True)
    assert m.head_dist.out_features == 3 and torch.equal(m.train()(x)[1], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no distillation head"):
        DistilledVisionTransformer(**TINY, dist_head=False).set_distilled_training()


def test_dynamic_img_size_keeps_both_prefix_tokens():
    m = DistilledVisionTransformer(**TINY, dynamic_img_size=True).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 48, 32)).shape == (1, 2 + 12 * 8, 64)
        static = m(torch.randn(1, 3, 32, 32))
    assert static.shape == (1, 5)


def test_refuses_pooling_it_cannot_do():
    with pytest.raises(ValueError, match="global_pool 'token' or 'avg'"):
        DistilledVisionTransformer(**TINY, global_pool="map")
    with pytest.raises(ValueError, match="must stay 'token'"):
        DistilledVisionTransformer(**TINY).reset_classifier(3, global_pool="avg")


@pytest.mark.parametrize("class_token", [True, False])
def test_mean_pooled_student_keeps_a_distillation_token(class_token):
    """With global_pool='avg' the class head reads the normed mean of the patch tokens, the distillation
    head the normed distillation token (the last prefix token); inference averages them."""
    m = DistilledVisionTransformer(**TINY, class_token=class_token, global_pool="avg", pos_embed="sincos").eval()
    prefix = 1 + class_token
    assert m.num_prefix_tokens == prefix and m.pos_embed.shape == (1, prefix + 64, 64)
    assert torch.count_nonzero(m.pos_embed[:, :prefix]) == 0  # sin-cos: zeros for the prefix tokens
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        cls = m.head(m.fc_norm(f[:, prefix:].mean(1)))
        dist = m.head_dist(m.fc_norm(f[:, prefix - 1]))
        torch.testing.assert_close(m(x), (cls + dist) / 2, atol=TOL, rtol=0)
        m.train().set_distilled_training(True)
        torch.manual_seed(0)
        got_cls, got_dist = m(x)
    torch.testing.assert_close((got_cls, got_dist), (cls, dist), atol=TOL, rtol=0)  # no dropout: same heads


def test_patch_dropout_keeps_the_distillation_token():
    m = DistilledVisionTransformer(**TINY, class_token=False, global_pool="avg", patch_drop_rate=0.75).train()
    tokens = m.embed(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(tokens[:, 0], (m.dist_token + m.pos_embed[:, :1])[:, 0].expand(2, -1))


# --- weights: timm's layout --------------------------------------------------------------------
def _student() -> DistilledVisionTransformer:
    torch.manual_seed(0)
    m = vitkit.create_model("deit_tiny_distilled_patch7_28")  # width 192: timm's 64-dim heads, 3 of them
    with torch.no_grad():
        for p in (m.cls_token, m.dist_token):
            p.normal_()
    return m.eval()


def test_timm_layout_round_trip(tmp_path):
    m, x = _student(), torch.randn(2, 1, 28, 28)
    save_timm(m, tmp_path / "deit.safetensors")
    keys = set(load_file(tmp_path / "deit.safetensors"))
    assert {"cls_token", "dist_token", "pos_embed", "head.weight", "head_dist.weight"} <= keys  # timm's names
    save_file(load_file(tmp_path / "deit.safetensors"), tmp_path / "foreign.safetensors")  # as timm writes it
    with pytest.warns(UserWarning, match="assuming 3"):  # the head count is the one guess (D 192 / 64)
        foreign = load_model(tmp_path / "foreign.safetensors")  # no name: all else is read off the tensors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vitkit's own file names its model in the header: nothing to guess
        back = load_model(tmp_path / "deit.safetensors")
    for loaded in (foreign, back):
        assert isinstance(loaded, DistilledVisionTransformer) and loaded.blocks[0].attn.num_heads == 3
        with torch.no_grad():
            assert max_diff(loaded(x), m(x)) == 0


def test_resampled_pos_embed_keeps_both_prefix_tokens(tmp_path):
    m = _student()
    save_timm(m, tmp_path / "deit.safetensors")
    big = load_model(tmp_path / "deit.safetensors", img_size=56, num_heads=3)  # 4x4 -> 8x8 patches
    stored = m.pos_embed.detach()
    assert big.pos_embed.shape == (1, 2 + 64, 192) and torch.equal(big.pos_embed[:, :2], stored[:, :2])
    assert torch.equal(big.pos_embed.detach(), resample_abs_pos_embed(stored, (8, 8), (4, 4), num_prefix_tokens=2))
    fresh = load_model(tmp_path / "deit.safetensors", num_classes=3, num_heads=3)  # new classes: both heads fresh
    assert fresh.head.out_features == fresh.head_dist.out_features == 3


def test_distilled_weights_under_a_plain_vit_name_are_refused(tmp_path):
    save_timm(_student(), tmp_path / "deit.safetensors")
    with pytest.raises(VitkitError, match="deit.safetensors: the weights are a distilled DeiT"):
        load_model(tmp_path / "deit.safetensors", "vit_tiny_patch7_28")


# --- weights: Hugging Face ---------------------------------------------------------------------
HF_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=24,
                 patch_size=4, num_labels=5, id2label={i: f"c{i}" for i in range(5)})


def hf_deit(transformers, cls: str, seed: int = 0):
    """A random HF DeiT whose tokens and position embeddings are far from their zero init."""
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(transformers.DeiTConfig(**HF_CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("cls, dist_head", [("DeiTForImageClassificationWithTeacher", True),
                                            ("DeiTForImageClassification", False)])
def test_hf_deit_classifier_parity_and_export(transformers, tmp_path, cls, dist_head):
    hf, x = hf_deit(transformers, cls), torch.randn(2, 3, 24, 24)
    hf.save_pretrained(tmp_path / "hf")
    m = load_model(tmp_path / "hf").eval()
    assert isinstance(m, DistilledVisionTransformer) and m.dist_head == dist_head
    assert m.checkpoint_meta["classes"] == [f"c{i}" for i in range(5)]
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        assert max_diff(m(x), expected) <= TOL
        save_hf(m, tmp_path / "back")  # exported as the same transformers class
        again = getattr(transformers, cls).from_pretrained(tmp_path / "back").eval()
        assert max_diff(again(pixel_values=x).logits, expected) == 0


def test_hf_deit_model_encoder_parity(transformers, tmp_path):
    """DeiTModel: the encoder's tokens; its pooler (never trained: DeiT has no pre-logits layer) is dropped."""
    hf, x = hf_deit(transformers, "DeiTModel"), torch.randn(2, 3, 24, 24)
    hf.save_pretrained(tmp_path)
    m = load_model(tmp_path).eval()
    assert m.num_classes == 0 and isinstance(m.pre_logits, torch.nn.Identity)
    with torch.no_grad():
        assert max_diff(m.forward_features(x), hf(pixel_values=x).last_hidden_state) <= TOL


def test_vitkit_convert_distilled_to_timm_and_hf(transformers, tmp_path):
    from vitkit.cli import main
    hf, x = hf_deit(transformers, "DeiTForImageClassificationWithTeacher"), torch.randn(2, 3, 24, 24)
    hf.save_pretrained(tmp_path / "hf")
    timm_file = tmp_path / "deit.pth"
    assert main(["convert", str(tmp_path / "hf"), str(timm_file), "--to", "timm"]) == 0
    assert main(["convert", str(timm_file), str(tmp_path / "hf2"), "--to", "hf", "--set", "num_heads=4"]) == 0
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        assert max_diff(load_model(timm_file, num_heads=4).eval()(x), expected) <= TOL
        again = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "hf2").eval()
        assert max_diff(again(pixel_values=x).logits, expected) <= TOL


# --- explain and inference see two prefix tokens --------------------------------------------
def test_explain_drops_both_prefix_tokens():
    m, x = _student(), torch.randn(2, 1, 28, 28)
    maps = attention_maps(m, x)
    assert maps.shape == (12, 2, 3, 2 + 16, 2 + 16)
    roll = attention_rollout(m, x)
    assert roll.shape == (2, 4, 4)
    torch.testing.assert_close(roll.flatten(1), rollout(maps)[:, 0, 2:], atol=1e-6, rtol=0)
    cls = class_attention(m, x, layers=-1)
    torch.testing.assert_close(cls.flatten(-2)[0], maps[-1][:, :, 0, 2:], atol=1e-6, rtol=0)
    dist = class_attention(m, x, token=1, layers=-1)
    torch.testing.assert_close(dist.flatten(-2)[0], maps[-1][:, :, 1, 2:], atol=1e-6, rtol=0)
    assert pos_embed_similarity(m).shape == (4, 4, 4, 4)


def test_prepare_for_inference_averages_the_heads():
    from vitkit.inference import prepare_for_inference
    m, x = _student(), torch.randn(2, 1, 28, 28)
    m.set_distilled_training(True)
    fast = prepare_for_inference(m, "fp32")
    with torch.no_grad():
        assert max_diff(fast(x), m.eval()(x)) <= TOL
