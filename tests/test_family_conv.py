"""What TNT, LeViT and CvT share with every vitkit classifier: the 28 px variants train, intermediates,
a new head recorded in the build spec, checkpoints, bf16 inference, and explain's honest refusal."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.explain import attention_maps, attention_rollout, class_attention
from vitkit.explain.attention import record_attention
from vitkit.inference import prepare_for_inference
from vitkit.models import count_params, model_param_count
from vitkit.models import input_geometry
from vitkit.weights import load_model, save_vitkit

MINI = ["tnt_mini_patch4_28", "levit_mini_28", "cvt_mini_28"]
# (final features, each stage's or block's [C, H, W]) for a 28x28 input
SHAPES = {
    "tnt_mini_patch4_28": ((50, 128), [(128, 7, 7)] * 4),  # [class] + 7x7 patches; one map per block
    "levit_mini_28": ((4, 192), [(64, 7, 7), (128, 4, 4), (192, 2, 2)]),  # stride-4 stem, then 7 -> 4 -> 2
    "cvt_mini_28": ((17, 128), [(32, 14, 14), (64, 7, 7), (128, 4, 4)]),  # [class] in the last stage only
}
# the fixtures' timm/HF weights, as (registered name, fixture folder, extra keywords)
ORACLES = [("tnt_s_patch16_224", "tnt_tiny", {}), ("levit_128s", "levit_tiny", {"distilled": False}),
           (None, "hf_cvt_tiny", {})]


def oracle_model(fixtures_dir, name, folder, extra):
    folder = fixtures_dir / "family" / folder
    if name is None:  # a Hugging Face folder says everything itself
        return vitkit.create_model(checkpoint=folder).eval(), folder
    kwargs = json.loads((folder / "config.json").read_text())["kwargs"]
    return vitkit.create_model(name, checkpoint=folder / "weights.safetensors", **extra, **kwargs).eval(), folder


@pytest.mark.parametrize("name", MINI)
def test_small_variants_fit_28px_grayscale(name):
    model = vitkit.create_model(name)
    assert 0.5e6 <= model_param_count(name) == count_params(model) <= 1.5e6
    assert input_geometry(model) == (1, 28) and model.num_classes == 10
    assert set(model.no_weight_decay()) <= {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", [pytest.param(MINI[0], marks=pytest.mark.slow), *MINI[1:]])  # TNT: ~3 s of CPU
def test_small_variants_train(name):
    model = vitkit.create_model(name, drop_path_rate=0.1).train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", MINI)
def test_forward_intermediates(name):
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    (final_shape, maps) = SHAPES[name]
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert tuple(final.shape) == (2, *final_shape)
        assert [tuple(t.shape) for t in intermediates] == [(2, *s) for s in maps]
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        torch.testing.assert_close(last[0], intermediates[-1])
        first = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert len(first) == 2 and torch.equal(first[0], intermediates[0])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=len(maps) + 1)


def test_tnt_intermediates_normed_as_the_final_tokens():
    model = vitkit.create_model("tnt_mini_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, (last,) = model.forward_intermediates(x, indices=1, norm=True)
        tokens = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), final[:, 1:])
    torch.testing.assert_close(tokens, final[:, 1:])


@pytest.mark.parametrize("name", MINI)
def test_reset_classifier_is_recorded_and_rebuilds(name, tmp_path):
    model = vitkit.create_model(name).eval()
    model.reset_classifier(4, zero_init=True)
    assert model.num_classes == 4 and model.build_spec.kwargs["num_classes"] == 4
    with torch.no_grad():
        assert torch.equal(model(torch.randn(2, 1, 28, 28)), torch.zeros(2, 4))
    rebuilt = vitkit.create_model(model.build_spec.name, **model.build_spec.kwargs)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        model.head.linear.weight.uniform_() if name.startswith("levit") else model.head.weight.uniform_()
    save_vitkit(model, tmp_path / "ckpt")  # a fine-tuned model's checkpoint keeps its new head
    back = load_model(tmp_path / "ckpt").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", MINI)
def test_checkpoint_round_trip(name, tmp_path):
    model = vitkit.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_vitkit(model, tmp_path / "ckpt", classes=[str(i) for i in range(10)])
    back = load_model(tmp_path / "ckpt").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("name, folder, extra", ORACLES)
def test_bf16_inference_is_close_to_fp32(fixtures_dir, name, folder, extra):
    model, path = oracle_model(fixtures_dir, name, folder, extra)
    x = load_file(path / "input.safetensors")["input"]
    with torch.no_grad():
        fp32 = model(x)
    bf16 = prepare_for_inference(model, "bf16")(x)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.03 * fp32.abs().max().item(), rtol=0)
    torch.testing.assert_close(prepare_for_inference(model, "fp32")(x), fp32, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MINI)
def test_explain_refuses_in_one_line(name):
    """Their attention is not ViT's square [tokens x tokens] map over one patch grid (TNT's has an inner
    level, LeViT's and CvT's change resolution and subsample keys), so explain says so rather than guess."""
    model = vitkit.create_model(name).eval()
    x = torch.randn(1, 1, 28, 28)
    calls = [lambda: attention_maps(model, x), lambda: attention_rollout(model, x),
             lambda: class_attention(model, x), lambda: record_attention(model, lambda *_: None).__enter__()]
    for call in calls:
        with pytest.raises(VitkitError) as err:
            call()
        assert "\n" not in str(err.value) and type(model).__name__ in str(err.value)
