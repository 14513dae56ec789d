"""Model math: shapes, parameter counts, attention, pooling, timm parity."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import vit_pytorch_file

import vitkit
from vitkit.models import (Attention, DropPath, PatchDropout, VisionTransformer, model_param_count,
                           resample_abs_pos_embed)
from vitkit.models.pos_embed import sincos_2d_pos_embed
from vitkit.weights import load_model, save_vitkit

TINY = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10)


@pytest.mark.parametrize("name,count", [
    ("vit_base_patch16_224", 86_567_656),
    ("vit_large_patch16_224", 304_326_632),
    ("vit_huge_patch14_224", 630_764_800),  # timm registers H/14 without a head
])
def test_param_counts_equal_timm(name, count):
    assert model_param_count(name) == count


def test_registry_names_and_errors():
    names = vitkit.list_models("vit_*")
    for n in ["vit_tiny_patch16_224", "vit_small_patch32_384", "vit_base_patch8_224", "vit_large_patch14_224",
              "vit_mini_patch4_28"]:
        assert n in names
    assert vitkit.list_models("vit_base*") == sorted(n for n in names if n.startswith("vit_base"))
    assert vitkit.list_models("ViT_Base*") == vitkit.list_models("vit_base*")  # as typed in a paper
    with pytest.raises(ValueError, match="unknown model"):
        vitkit.create_model("vit_enormous_patch3_1")


def test_forward_shapes_and_api():
    m = vitkit.create_model("vit_mini_patch4_28", num_classes=7)
    x = torch.randn(3, 1, 28, 28)
    feats = m.forward_features(x)
    assert feats.shape == (3, 1 + 49, 128)
    assert m.forward_head(feats, pre_logits=True).shape == (3, 128)
    assert m(x).shape == (3, 7)
    m.reset_classifier(4, zero_init=True)
    assert torch.equal(m(x), torch.zeros(3, 4))  # the paper's zero-initialised fine-tuning head
    m.reset_classifier(0)
    assert m(x).shape == (3, 128)


def test_wrong_input_is_a_clear_error():
    m = vitkit.create_model("vit_mini_patch4_28")
    with pytest.raises(ValueError, match="1 input channels, got 3"):
        m(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="28x28 input, got 32x32"):
        m(torch.randn(1, 1, 32, 32))


def _manual_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)V written out from the module's weights, head by head."""
    b, n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
    outs = []
    for i in range(h):
        qi, ki, vi = (t[..., i * d:(i + 1) * d] for t in (q, k, v))
        w = torch.exp(qi @ ki.transpose(1, 2) / d ** 0.5)
        outs.append((w / w.sum(-1, keepdim=True)) @ vi)
    return torch.cat(outs, -1) @ attn.proj.weight.T + attn.proj.bias


def test_attention_equals_handwritten_reference():
    attn = Attention(48, num_heads=3).eval()
    x = torch.randn(2, 10, 48)
    ref = _manual_attention(attn, x)
    with torch.no_grad():
        fused = attn(x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    math_path = attn(x.requires_grad_())  # grads on CPU take the explicit path
    torch.testing.assert_close(math_path.detach(), ref, atol=1e-5, rtol=1e-5)


def test_attention_hook_sees_probabilities():
    attn = Attention(32, num_heads=4).eval()
    seen = []
    attn.attn_hook = lambda mod, a: seen.append(a)
    attn(torch.randn(2, 5, 32))
    (a,) = seen
    assert a.shape == (2, 4, 5, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 5))


def test_attention_for_first_queries_equals_reference_rows():
    attn = Attention(48, num_heads=3).eval()
    x = torch.randn(2, 10, 48)
    ref = _manual_attention(attn, x)[:, :2]
    with torch.no_grad():
        torch.testing.assert_close(attn(x, queries=2), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x.requires_grad_(), queries=2).detach(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vit_mini_patch4_28", "deit_mini_distilled_patch4_28"])
def test_last_block_on_prefix_tokens_only_keeps_logits_and_grads(name):
    """forward() updates only the [class]/distillation tokens in the last block; the logits and
    every gradient must equal the full computation's (forward_features then forward_head)."""
    model = vitkit.create_model(name, drop_path_rate=0.2).train()
    x = torch.randn(3, 1, 28, 28)

    def run(fn):
        torch.manual_seed(0)  # same stochastic-depth draws on both paths
        out = fn(x)
        loss = sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out,)))
        model.zero_grad()
        loss.backward()
        return out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    fast, fast_grads = run(model)
    full, full_grads = run(lambda x: model.forward_head(model.forward_features(x)))
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == full_grads.keys()
    for k in full_grads:
        torch.testing.assert_close(fast_grads[k], full_grads[k], atol=1e-5, rtol=1e-4, msg=k)


def test_explain_sees_the_full_last_block_and_the_model_its_fast_path():
    """The model's forward does not look for explain's hooks: explain asks for every token itself."""
    from vitkit.explain.attention import forward_with_attention
    model = vitkit.create_model("vit_mini_patch4_28").eval()
    seen, x = [], torch.randn(2, 1, 28, 28)
    model.blocks[-1].attn.attn_hook = lambda mod, a: seen.append(a.shape)
    with torch.no_grad():
        model(x)
        assert seen == [(2, 4, 1, 50)]  # [class] row only
        model.blocks[-1].attn.attn_hook = None
        logits = forward_with_attention(model, x, lambda i, a: seen.append(a.shape), layers=[5])
    assert seen[-1] == (2, 4, 50, 50) and torch.allclose(logits, model(x), atol=1e-5)


def test_class_token_vs_avg_pool():
    tok = VisionTransformer(**TINY)
    avg = VisionTransformer(**TINY, class_token=False, global_pool="avg")
    assert tok.num_prefix_tokens == 1 and avg.num_prefix_tokens == 0
    assert isinstance(avg.norm, torch.nn.Identity) and isinstance(avg.fc_norm, torch.nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = avg.forward_features(x)
        torch.testing.assert_close(avg.forward_head(f, pre_logits=True), avg.fc_norm(f.mean(1)))
        f = tok.forward_features(x)
        torch.testing.assert_close(tok.forward_head(f, pre_logits=True), f[:, 0])
    with pytest.raises(ValueError, match="class_token"):
        VisionTransformer(**TINY, class_token=False, global_pool="token")


def test_attention_pooling_equals_hf_siglip_head():
    """timm's 'map' pooling against an independent implementation: HF SigLIP's pooling head."""
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    torch.manual_seed(0)
    model = VisionTransformer(**TINY, global_pool="map", mlp_ratio=2.0).eval()
    pool = model.attn_pool
    cfg = SiglipVisionConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128, hidden_act="gelu",
                             layer_norm_eps=1e-6)
    hf = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    for p in pool.parameters():  # random, not init values: every weight must land where it is read
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        hf.probe.copy_(pool.latent)
        hf.attention.in_proj_weight.copy_(torch.cat([pool.q.weight, pool.kv.weight]))
        hf.attention.in_proj_bias.copy_(torch.cat([pool.q.bias, pool.kv.bias]))
        hf.attention.out_proj.load_state_dict(pool.proj.state_dict())
        hf.layernorm.load_state_dict(pool.norm.state_dict())
        hf.mlp.fc1.load_state_dict(pool.mlp.fc1.state_dict())
        hf.mlp.fc2.load_state_dict(pool.mlp.fc2.state_dict())
        tokens = torch.randn(3, 65, 64)
        torch.testing.assert_close(pool(tokens), hf(tokens), atol=1e-5, rtol=1e-5)
        x = torch.randn(2, 3, 32, 32)
        features = model.forward_features(x)  # the final norm comes before the pool, as in timm
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), hf(features), atol=1e-5, rtol=1e-5)
    assert {"attn_pool.latent", "attn_pool.q.weight", "attn_pool.kv.weight", "attn_pool.proj.weight",
            "attn_pool.norm.weight", "attn_pool.mlp.fc1.weight"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="global_pool='map'"):
        VisionTransformer(**TINY).reset_classifier(5, global_pool="map")
    model.reset_classifier(5, global_pool="avg")
    assert model.attn_pool is None and model(x).shape == (2, 5)


def test_pre_logits_head_is_tanh_layer():
    m = VisionTransformer(**TINY, representation_size=32).eval()
    assert m.head.in_features == 32 and "pre_logits.fc.weight" in m.state_dict()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(2, 3, 32, 32))
        pre = m.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pre, torch.tanh(m.pre_logits.fc(feats[:, 0])))


def test_mimetic_init_gives_the_papers_attention_products():
    """Trockman & Kolter 2023: W_v W_o ≈ 0.4·(Z − I), Z of variance 1/D; each head's W_q W_kᵀ the
    rank-d_head part of 0.7·(Z + I), so a token's key best matches its own query."""
    torch.manual_seed(0)
    d, heads = 128, 4
    attn = vitkit.create_model("vit_mini_patch4_28", weight_init="mimetic").blocks[0].attn
    w = attn.qkv.weight.detach()
    vo = attn.proj.weight.detach() @ w[2 * d:]
    off = vo - torch.diag(vo.diag())
    assert abs(vo.diag().mean() + 0.4) < 0.02 and abs(off.std() - 0.4 / d ** 0.5) < 0.005
    x = torch.randn(200, d)
    plain = vitkit.create_model("vit_mini_patch4_28").blocks[0].attn
    for a, share in ((attn, 0.9), (plain, None)):
        q, k, _ = a.qkv(x).detach().chunk(3, dim=-1)
        for h in range(heads):
            s = slice(h * d // heads, (h + 1) * d // heads)
            own = ((q[:, s] @ k[:, s].T).argmax(1) == torch.arange(200)).float().mean()
            assert own > share if share else own < 0.2
    with pytest.raises(ValueError, match="weight_init must be one of"):
        vitkit.create_model("vit_mini_patch4_28", weight_init="jax")


def test_drop_path_is_identity_in_eval_and_unbiased_in_train():
    dp = DropPath(0.3)
    x = torch.ones(20000, 4)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = (y[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.7) < 0.02 and torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.7)))


def test_patch_dropout_keeps_prefix_and_a_random_subset_of_patches():
    x = torch.randn(64, 1 + 49, 8)
    pd = PatchDropout(0.5, num_prefix_tokens=1)
    assert torch.equal(pd.eval()(x), x)
    y = pd.train()(x)
    assert y.shape == (64, 1 + 24, 8) and torch.equal(y[:, 0], x[:, 0])
    # every kept token is one of the image's own patches, none twice, and images keep different ones
    match = (y[:, 1:, None, :] == x[:, None, 1:, :]).all(-1)  # [B, kept, patches]
    assert torch.all(match.sum(-1) == 1) and torch.all(match.sum(1) <= 1)
    chosen = match.any(1)
    assert not torch.equal(chosen[0], chosen[1]) and chosen.float().mean(0).min() > 0
    with pytest.raises(ValueError, match="patch_drop_rate"):
        PatchDropout(1.0)


def test_patch_dropout_model_trains_on_fewer_tokens_and_evaluates_unchanged():
    torch.manual_seed(0)
    plain = vitkit.create_model("sl_vit_mini_patch4_28", class_token=False, global_pool="avg")
    dropped = vitkit.create_model("sl_vit_mini_patch4_28", class_token=False, global_pool="avg",
                                  patch_drop_rate=0.5)
    dropped.load_state_dict(plain.state_dict())  # no parameters of its own: checkpoints stay interchangeable
    x = torch.randn(2, 1, 28, 28)
    assert dropped.train().embed(x).shape == (2, 24, 128)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
    deit = vitkit.create_model("deit_mini_distilled_patch4_28", patch_drop_rate=0.25).train()
    assert deit.embed(x).shape == (2, 2 + 36, 128)  # [class] and distillation tokens always stay


def test_a_compiled_model_follows_a_changed_patch_drop_rate():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mini_patch4_28", class_token=False, global_pool="avg", patch_drop_rate=0.5,
                                embed_dim=32, depth=1, num_heads=2)
    compiled, x = torch.compile(model, backend="eager"), torch.randn(2, 1, 28, 28)  # dynamo's guards, no C++
    model.train()
    assert not torch.equal(compiled(x), compiled(x))  # half the tokens, a different half each call
    model.set_patch_drop_rate(0.0)  # no stale graph: training on every token equals evaluation
    assert isinstance(model.patch_drop, torch.nn.Identity)
    trained = compiled(x)
    assert torch.equal(trained, compiled.eval()(x))
    model.train().set_patch_drop_rate(0.75)
    assert model.embed(x).shape == (2, 12, 32)
    with pytest.raises(ValueError, match="patch_drop_rate"):
        model.set_patch_drop_rate(1.0)


def test_stochastic_depth_rates_grow_linearly():
    m = vitkit.create_model("vit_mini_patch4_28", drop_path_rate=0.25)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.25)
    assert all(b > a for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("folder,kwargs", [
    ("a_tiny_cls_token", {}),
    ("b_tiny_avgpool_noclstoken", dict(class_token=False, global_pool="avg")),
])
def test_logits_equal_timm(fixtures_dir, folder, kwargs):
    m = VisionTransformer(**TINY, **kwargs).eval()
    m.load_state_dict(load_file(fixtures_dir / folder / "model.safetensors"), strict=True)
    x = load_file(fixtures_dir / folder / "input.safetensors")["input"]
    ref = load_file(fixtures_dir / folder / "logits.safetensors")["logits"]
    with torch.no_grad():
        assert (m(x) - ref).abs().max() <= 1e-5


def test_dynamic_img_size_and_pos_embed_resample_equal_timm(fixtures_dir):
    f = fixtures_dir / "f_tiny_cls_token_at64"
    sd = load_file(f / "model.safetensors")
    x = load_file(f / "input.safetensors")["input"]
    ref = load_file(f / "logits.safetensors")
    dyn = VisionTransformer(**TINY, dynamic_img_size=True).eval()
    dyn.load_state_dict(sd)
    pos = resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1)
    torch.testing.assert_close(pos, load_file(f / "pos_embed_16x16.safetensors")["pos_embed"], atol=1e-6, rtol=0)
    static = VisionTransformer(**{**TINY, "img_size": 64}).eval()
    static.load_state_dict({**sd, "pos_embed": pos})
    with torch.no_grad():
        assert (dyn(x) - ref["logits"]).abs().max() <= 1e-5
        assert (static(x) - ref["logits_static64"]).abs().max() <= 1e-5


def test_non_square_grid_resample_keeps_prefix():
    pos = torch.randn(1, 1 + 4 * 6, 8)
    out = resample_abs_pos_embed(pos, (8, 3), old_size=(4, 6))
    assert out.shape == (1, 1 + 24, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.equal(resample_abs_pos_embed(pos, (4, 6), old_size=(4, 6)), pos)


def test_sincos_pos_embed_equals_vit_pytorch_and_is_fixed(tmp_path):
    """Fixed 2-D sin-cos embeddings, against vit-pytorch's SimpleViT (Beyer et al. 2022)."""
    reference = vit_pytorch_file("simple_vit").posemb_sincos_2d(7, 5, 64)  # a non-square grid
    torch.testing.assert_close(sincos_2d_pos_embed((7, 5), 64)[0], reference, atol=1e-6, rtol=0)
    model = vitkit.create_model("vit_mini_patch4_28", img_size=(28, 20), pos_embed="sincos")
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" in model.state_dict()
    assert torch.equal(model.pos_embed[:, 0], torch.zeros(1, 128))  # the [class] token's: zeros, as in MAE
    assert torch.equal(model.pos_embed[:, 1:], sincos_2d_pos_embed((7, 5), 128))
    save_vitkit(model, tmp_path / "run")
    back, x = load_model(tmp_path / "run").eval(), torch.randn(2, 1, 28, 20)
    assert "pos_embed" not in dict(back.named_parameters())  # still fixed when fine-tuned from the file
    with torch.no_grad():
        torch.testing.assert_close(back(x), model.eval()(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="pos_embed must be 'learn' or 'sincos'"):
        VisionTransformer(**TINY, pos_embed="rope")
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed((2, 2), 66)


@pytest.mark.parametrize("name, change", [("vit_mini_patch4_28", dict(num_classes=5, zero_init=True)),
                                          ("vit_mini_patch4_28", dict(num_classes=10, global_pool="avg")),
                                          ("deit_mini_distilled_patch4_28", dict(num_classes=4)),
                                          ("resnet_mini_28", dict(num_classes=3))])
def test_a_checkpoint_saved_after_reset_classifier_rebuilds_that_model(tmp_path, name, change):
    from vitkit.weights import load_model, save_vitkit
    model = vitkit.create_model(name).eval()
    model.reset_classifier(**change)
    if hasattr(model, "head"):
        torch.nn.init.normal_(model.head.weight)  # a head the reload must keep, not re-draw
    save_vitkit(model, tmp_path / "m")
    back = load_model(tmp_path / "m").eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), model(x)) and back(x).shape == (2, change["num_classes"])


def test_token_pooling_cannot_be_chosen_without_a_class_token():
    model = vitkit.create_model("vit_mini_patch4_28", class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="needs the \\[class\\] token"):
        model.reset_classifier(10, global_pool="token")
