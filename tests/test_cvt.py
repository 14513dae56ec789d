"""CvT against Hugging Face's ``CvtForImageClassification``: the hf_cvt_tiny fixture, a second
configuration built here with transformers, and the parameter counts of the released configurations."""
from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vitkit
from vitkit.errors import VitkitError
from vitkit.models import model_param_count
from vitkit.models.cvt import CvT
from vitkit.models.fuse import fuse_batchnorm

TOL = 1e-5
# microsoft/cvt-13, cvt-21 and cvt-w24-384-22k (their config.json files), all 1000-class classifiers
RELEASED = {
    "cvt_13": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 2, 10]),
    "cvt_21": dict(embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=[1, 4, 16]),
    "cvt_w24": dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20]),
}


@pytest.fixture(scope="module")
def transformers():
    sys.modules.setdefault("torchvision", None)  # see test_weights.py: the installed torchvision is broken
    import transformers
    return transformers


@pytest.fixture(scope="module")
def oracle(fixtures_dir):
    folder = fixtures_dir / "family" / "hf_cvt_tiny"
    return (folder, load_file(folder / "input.safetensors")["input"],
            load_file(folder / "logits.safetensors")["logits"])


def test_hf_folder_loads_and_reproduces_logits(oracle):
    folder, x, logits = oracle
    model = vitkit.create_model(checkpoint=folder).eval()
    assert isinstance(model, CvT) and model.checkpoint_meta["format"] == "hf"
    assert model.checkpoint_meta["classes"] == [f"LABEL_{i}" for i in range(10)]
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=TOL, rtol=0)
    rebuilt = vitkit.create_model(model.build_spec.name, **model.build_spec.kwargs)  # the spec rebuilds it
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_hf_weights_file_alone_loads_with_its_config_beside_it(oracle):
    folder, x, logits = oracle
    model = vitkit.create_model(checkpoint=folder / "model.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=TOL, rtol=0)


def test_a_second_configuration_against_transformers(transformers, tmp_path):
    """No [class] token (mean pooling), one input channel, other kernels and strides, no q/k/v bias in
    one stage, perturbed BatchNorm statistics: HF's model built here, saved, loaded by vitkit. (HF indexes
    its drop-path rates by stage, so each stage needs more blocks than its index.)"""
    config = transformers.CvtConfig(
        num_channels=1, embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], patch_sizes=[5, 3, 3],
        patch_stride=[2, 2, 2], patch_padding=[2, 1, 1], mlp_ratio=[2.0, 3.0, 4.0], qkv_bias=[True, False, True],
        cls_token=[False, False, False], stride_kv=[1, 2, 2], kernel_qkv=[3, 3, 3], num_labels=5)
    hf = transformers.CvtForImageClassification(config)
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t)).abs_() if name.endswith("running_var") else \
                    t.add_(0.05 * torch.randn_like(t))
    hf.eval().save_pretrained(tmp_path)
    model = vitkit.create_model(checkpoint=tmp_path).eval()
    assert model.global_pool == "avg" and model.num_prefix_tokens == 0
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        expected = _hf_logits_without_cls_token(hf, x)
        torch.testing.assert_close(model(x), expected, atol=TOL, rtol=0)
        torch.testing.assert_close(fuse_batchnorm(copy.deepcopy(model))(x), expected, atol=TOL, rtol=0)


def _hf_logits_without_cls_token(hf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``CvtForImageClassification.forward`` computes without a [class] token (its own else-branch,
    step by step): transformers 5.25 raises there, reading ``outputs[1]`` from an output without one."""
    grid = hf.cvt(pixel_values=x).last_hidden_state  # [B, C, H, W]
    return hf.classifier(hf.layernorm(grid.flatten(2).transpose(1, 2)).mean(dim=1))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_param_counts_equal_hf(transformers, name):
    with torch.device("meta"):
        hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000, **RELEASED[name]))
    assert model_param_count(name) == sum(p.numel() for p in hf.parameters())


def test_fixture_count_is_cvt13_with_cvtconfigs_default_two_labels(fixtures_dir):
    """The fixture's 'cvt-13' count was made with CvtConfig()'s defaults, whose num_labels is 2."""
    counts = json.loads((fixtures_dir / "family" / "hf_cvt_tiny" / "fixture.json").read_text())
    assert model_param_count("cvt_13", num_classes=2) == counts["full_size_param_counts"][
        "cvt-13 (microsoft/cvt-13 config)"]


def test_unsupported_hf_configs_are_refused(oracle, tmp_path):
    folder = oracle[0]
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    for change, message in ((dict(qkv_projection_method=["avg"] * 3), "qkv_projection_method"),
                            (dict(cls_token=[True, False, True]), "only the last stage")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(VitkitError, match=message):
            vitkit.create_model(checkpoint=tmp_path)


def test_attention_scales_by_the_full_width_as_hf():
    """HF's (and the paper code's) 1/√width, not 1/√head width: with 2 heads the two differ."""
    model = CvT(embed_dim=(8,), depth=(1,), num_heads=(2,), patch_size=3, patch_stride=2, patch_padding=1,
                img_size=16, num_classes=0)
    assert model.stages[0].blocks[0].attn.scale == 8 ** -0.5
    assert isinstance(model.head, nn.Identity) and model.global_pool == "token"
