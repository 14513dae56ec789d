"""LeViT against timm's ``Levit`` (the levit_tiny fixture), its distilled variant, and BatchNorm folding."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vitkit
from vitkit.errors import VitkitError
from vitkit.inference import prepare_for_inference
from vitkit.models import model_param_count
from vitkit.models.fuse import fuse_batchnorm
from vitkit.models.levit import Levit, LevitDistilled

TOL = 1e-5


@pytest.fixture(scope="module")
def oracle(fixtures_dir):
    folder = fixtures_dir / "family" / "levit_tiny"
    config = json.loads((folder / "config.json").read_text())
    assert config["oracle"] == "timm timm.models.levit.Levit"
    return (folder, config, load_file(folder / "input.safetensors")["input"],
            load_file(folder / "logits.safetensors")["logits"])


@pytest.fixture(scope="module")
def loaded(oracle):
    folder, config, _, _ = oracle
    model = Levit(**config["kwargs"]).eval()
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    return model


def test_timm_weights_load_strictly_and_reproduce_logits(oracle, loaded):
    with torch.no_grad():
        torch.testing.assert_close(loaded(oracle[2]), oracle[3], atol=TOL, rtol=0)


def test_create_model_loads_a_timm_file_by_name(oracle):
    folder, config, x, logits = oracle
    model = vitkit.create_model("levit_128s", checkpoint=folder / "weights.safetensors", distilled=False,
                                **config["kwargs"]).eval()
    assert type(model) is Levit
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=TOL, rtol=0)
    with pytest.raises(VitkitError, match="missing tensor head_dist"):  # timm's names build the distilled one
        vitkit.create_model("levit_128s", checkpoint=folder / "weights.safetensors", **config["kwargs"])


def test_full_size_param_counts_equal_timms(oracle):
    """timm's levit_* are LevitDistilled, so their counts include head_dist."""
    for name, count in oracle[1]["full_size_param_counts"].items():
        assert model_param_count(name) == count, name
    assert round(model_param_count("levit_192") / 1e6) == 11  # the paper's Table 1 (LeViT-192: 11M)


def test_distilled_by_default_averages_two_heads(oracle):
    config = oracle[1]["kwargs"]
    model = vitkit.create_model("levit_128s", **config).eval()
    assert isinstance(model, LevitDistilled) and isinstance(model.head_dist, nn.Module)
    x = oracle[2]
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), (model.head(pooled) + model.head_dist(pooled)) / 2)
    model.train().set_distilled_training(True)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, config["num_classes"])
    model.eval().reset_classifier(3, zero_init=True)
    assert model.head_dist.linear.out_features == 3 and not model.head_dist.training
    assert model.build_spec.kwargs["num_classes"] == 3 and torch.equal(model(x), torch.zeros(2, 3))


def test_fused_batchnorm_gives_the_same_logits(oracle, loaded):
    """The fixture's BatchNorm statistics are perturbed, so folding them wrongly shows."""
    fused = fuse_batchnorm(copy.deepcopy(loaded))
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {nn.BatchNorm1d, nn.BatchNorm2d}
    with torch.no_grad():
        torch.testing.assert_close(fused(oracle[2]), oracle[3], atol=TOL, rtol=0)
        torch.testing.assert_close(prepare_for_inference(loaded, "fp32")(oracle[2]), oracle[3], atol=TOL, rtol=0)
    assert any(isinstance(m, nn.BatchNorm1d) for m in loaded.modules())  # the caller's model is left alone


def test_fusing_needs_eval_mode(loaded):
    with pytest.raises(ValueError, match="eval"):
        fuse_batchnorm(copy.deepcopy(loaded).train())
