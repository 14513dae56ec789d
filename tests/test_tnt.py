"""TNT against timm's ``TNT`` (the tnt_tiny fixture: timm 1.0.31's weights, input and logits)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.models import model_param_count
from vitkit.models.tnt import TNT

TOL = 1e-5


@pytest.fixture(scope="module")
def oracle(fixtures_dir):
    folder = fixtures_dir / "family" / "tnt_tiny"
    config = json.loads((folder / "config.json").read_text())
    assert config["oracle"] == "timm timm.models.tnt.TNT"
    return (folder, config, load_file(folder / "input.safetensors")["input"],
            load_file(folder / "logits.safetensors")["logits"])


def test_timm_weights_load_strictly_and_reproduce_logits(oracle):
    folder, config, x, logits = oracle
    model = TNT(**config["kwargs"]).eval()
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=TOL, rtol=0)


def test_create_model_loads_a_timm_file_by_name(oracle):
    folder, config, x, logits = oracle
    model = vitkit.create_model("tnt_s_patch16_224", checkpoint=folder / "weights.safetensors",
                                **config["kwargs"]).eval()
    assert isinstance(model, TNT) and model.build_spec.kwargs["inner_dim"] == config["kwargs"]["inner_dim"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=TOL, rtol=0)


def test_full_size_param_counts_equal_timms(oracle):
    for name, count in oracle[1]["full_size_param_counts"].items():
        assert model_param_count(name) == count, name


def test_pixel_tokens_never_see_a_neighbouring_patch():
    """Each patch is convolved on its own (timm's current layout): changing one patch's pixels leaves
    every other patch's pixel tokens as they were."""
    model = vitkit.create_model("tnt_mini_patch4_28").eval()
    x = torch.randn(1, 1, 28, 28)
    y = x.clone()
    y[..., :4, :4] += 1.0  # patch (0, 0) only
    with torch.no_grad():
        a, b = (model.pixel_embed(t, model.pixel_pos).reshape(1, 49, -1) for t in (x, y))
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3
    torch.testing.assert_close(a[:, 1:], b[:, 1:], atol=0, rtol=0)
