"""Every model carries one build spec, and a checkpoint of it rebuilds exactly that model."""
import json

import pytest
import torch

import vitkit
from vitkit.errors import VitkitError
from vitkit.models import (BuildSpec, count_params, input_geometry, list_models, model_flops, model_param_count,
                           spec_of)
from vitkit.train.finetune import replace_head
from vitkit.weights import save_vitkit

REAL_UP_TO = 3_000_000  # parameters: bigger models are rebuilt from their spec's JSON on the meta device and
                        # compared by spec and tensor shapes (the small ones of every class compare outputs)


def _changed(model: torch.nn.Module) -> torch.nn.Module:
    """Every architecture change the API offers a model of this kind, as a fine-tuning run makes them."""
    if hasattr(model, "set_patch_drop_rate"):
        model.set_patch_drop_rate(0.25)
    if getattr(model, "pre_logits", None) is not None:
        replace_head(model, 3)  # the paper's zero-initialised head, pre-logits dropped
    model.reset_classifier(3)
    return model


def _input(model: torch.nn.Module) -> torch.Tensor:
    chans, size = input_geometry(model)
    return torch.randn(2, chans, size, size)


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's outputs on ``x`` with the same random draws each call (an MAE masks at random and
    returns its loss, prediction and mask)."""
    torch.manual_seed(1)
    out = model(x)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", list_models())
def test_a_changed_model_saved_and_rebuilt_is_the_same_model(tmp_path, name):
    if model_param_count(name) > REAL_UP_TO:
        with torch.device("meta"):
            model = _changed(vitkit.create_model(name, weight_init="skip"))
            spec = BuildSpec.from_json(json.loads(json.dumps(spec_of(model).to_json())))
            back = vitkit.create_model(spec.name, **spec.kwargs)
        assert spec_of(back) == spec_of(model)
        assert {k: v.shape for k, v in back.state_dict().items()} == \
               {k: v.shape for k, v in model.state_dict().items()}
        return
    torch.manual_seed(0)
    model = _changed(vitkit.create_model(name)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("head", "fc.")):
                p.normal_()  # a head the rebuild must keep, not re-draw (a zero head would hide a lost one)
    save_vitkit(model, tmp_path / "m")
    back = vitkit.create_model(checkpoint=tmp_path / "m").eval()
    assert type(back) is type(model) and spec_of(back) == spec_of(model)
    theirs = back.state_dict()
    assert theirs.keys() == model.state_dict().keys()
    assert all(torch.equal(theirs[k], v) for k, v in model.state_dict().items())
    x = _input(model)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_outputs(back, x), _outputs(model, x), strict=True))


def test_the_spec_follows_each_change():
    model = vitkit.create_model("vit_mini_patch4_28", representation_size=64)
    assert spec_of(model) == BuildSpec("vit_mini_patch4_28", {**vitkit.get_model_spec("vit_mini_patch4_28").kwargs,
                                                              "representation_size": 64})
    replace_head(model, 5)
    model.reset_classifier(5, global_pool="avg")
    model.set_patch_drop_rate(0.5)
    kwargs = spec_of(model).kwargs
    assert (kwargs["representation_size"], kwargs["num_classes"], kwargs["global_pool"], kwargs["patch_drop_rate"]) \
        == (None, 5, "avg", 0.5)
    assert kwargs["fc_norm"] is False  # the model keeps its final norm where it was built: the spec says so
    assert count_params(vitkit.create_model("vit_mini_patch4_28", **kwargs)) == count_params(model)


def test_a_model_built_by_its_class_has_no_spec_and_says_how_to_get_one():
    model = vitkit.models.VisionTransformer(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    model.reset_classifier(3)  # no spec to keep: fine
    with pytest.raises(VitkitError, match="create_model"):
        spec_of(model)


def test_bad_model_arguments_are_user_errors_and_bugs_are_not():
    with pytest.raises(VitkitError, match="takes no 'depht' argument") as info:
        vitkit.create_model("vit_mini_patch4_28", depht=3)
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, TypeError)  # chained
    with pytest.raises(VitkitError, match="not divisible by num_heads"):
        vitkit.create_model("vit_mini_patch4_28", num_heads=5)
    with pytest.raises(VitkitError, match="unknown model"):
        vitkit.create_model("vit_enormous_patch3_1")


@pytest.mark.parametrize("name, gflops", [("vit_base_patch16_224", 35.13), ("swin_tiny_patch4_window7_224", 8.98)])
def test_flops_are_counted_on_the_meta_device(name, gflops):
    """ViT-B/16: timm's 17.6 GMACs less the last block's patch tokens, which vitkit skips (~6%)."""
    assert model_flops(name) / 1e9 == pytest.approx(gflops, rel=0.065)


@pytest.mark.parametrize("name", ["pit_mini_28", "cait_mini_patch4_28", "crossvit_mini_28", "levit_mini_28"])
def test_flops_count_models_that_feed_parameters_to_submodules(name):
    """PiT and CaiT hand their [class] token (a parameter) straight to a submodule; every linear weight
    is applied at least once per image, so 2 FLOPs per weight is a floor."""
    model = vitkit.create_model(name)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model_flops(name) >= 2 * linear
