"""vitkit.explain: known answers for rollout and attention distance, hooks that change nothing, figures and report."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from torch import nn

from vitkit.errors import VitkitError
from vitkit.explain import (attention_distance, attention_distance_figure, attention_maps, attention_rollout,
                            class_attention, explain_images, filter_components, mean_attention_distance, model_figures,
                            patch_distances, pos_embed_similarity, record_attention, rollout)
from vitkit.models import Attention, DistilledVisionTransformer, VisionTransformer


def _sharpen(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights large enough that attention is far from uniform (so wrong maths shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:  # leave LayerNorm scales at 1 and biases at 0
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def tiny(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    return _sharpen(VisionTransformer(**{**args, **kw}))


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    return tiny()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _stochastic(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)).softmax(dim=-1)


# --- rollout ------------------------------------------------------------------------------

def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(6).expand(2, 3, 6, 6)
    assert torch.allclose(rollout([eye] * 4), torch.eye(6).expand(2, 6, 6))


def test_rollout_of_uniform_attention_has_closed_form_and_uniform_class_row():
    n, layers = 7, 3
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    u, eye = torch.full((n, n), 1.0 / n), torch.eye(n)
    # (0.5U + 0.5I)^L = U + 2^-L (I - U), because U is idempotent
    assert torch.allclose(rollout([uniform] * layers)[0], u + 0.5 ** layers * (eye - u), atol=1e-6)
    row = rollout([uniform] * layers)[0, 0, 1:]
    assert torch.allclose(row, row[0].expand_as(row))


def test_rollout_multiplies_later_layers_on_the_left():
    a1, a2 = _stochastic(1, 2, 5, 5, seed=1), _stochastic(1, 2, 5, 5, seed=2)
    eye = torch.eye(5)
    h1, h2 = 0.5 * a1.mean(1) + 0.5 * eye, 0.5 * a2.mean(1) + 0.5 * eye
    assert torch.allclose(rollout([a1, a2]), h2 @ h1, atol=1e-6)
    assert not torch.allclose(h2 @ h1, h1 @ h2, atol=1e-4)


def test_rollout_rows_stay_stochastic_with_max_fusion():
    r = rollout([_stochastic(2, 4, 6, 6, seed=s) for s in range(3)], head_fusion="max")
    assert torch.allclose(r.sum(-1), torch.ones(2, 6), atol=1e-6)


def test_model_rollout_matches_rollout_of_stored_maps(model, x):
    got = attention_rollout(model, x)
    assert got.shape == (2, 8, 8)
    assert torch.allclose(got.flatten(1), rollout(attention_maps(model, x))[:, 0, 1:], atol=1e-6)


def test_avg_pool_model_uses_mean_of_patch_rows(x):
    m = tiny(class_token=False, global_pool="avg")
    assert torch.allclose(attention_rollout(m, x).flatten(1), rollout(attention_maps(m, x)).mean(1), atol=1e-6)
    with pytest.raises(VitkitError, match="no prefix tokens"):
        attention_rollout(m, x, token=0)


def test_attention_pooled_model_rolls_out_the_pools_own_weights(x):
    """A 'map' head reads its latent query's weights over the last tokens: rollout is that row
    times the layers' rollout, computed here from the pool's parameters by hand."""
    m = tiny(class_token=False, global_pool="map")
    tokens = m.norm(m.blocks(m.embed(x)))  # the pool's input
    pool = m.attn_pool
    q = pool.q(pool.latent).reshape(1, 2, 32)  # [1, heads, head_dim]
    k = pool.kv(tokens)[..., :64].reshape(2, 64, 2, 32)  # [B, N, heads, head_dim]
    w = torch.einsum("hd,bnhd->bhn", q[0], k).mul(32 ** -0.5).softmax(-1).mean(1)  # heads fused
    expected = torch.einsum("bn,bnm->bm", w, rollout(attention_maps(m, x)))
    got = attention_rollout(m, x)
    assert torch.allclose(got.flatten(1), expected, atol=1e-5)
    assert not torch.allclose(got.flatten(1), rollout(attention_maps(m, x)).mean(1), atol=1e-3)
    assert m.attn_pool.attn_hook is None


def test_the_report_draws_the_rollout_that_attention_rollout_computes(x, tmp_path, monkeypatch):
    """`vitkit explain` and `vitkit serve` draw the same map, for an attention-pooled model too."""
    import vitkit.explain.pipeline as pipeline
    m = tiny(class_token=False, global_pool="map")
    drawn, draw = [], pipeline.plot_rollout
    monkeypatch.setattr(pipeline, "plot_rollout", lambda heat, *args: drawn.append(heat) or draw(heat, *args))
    explain_images(m, x, None, ["a.png", "b.png"], None, tmp_path, batch_size=1)
    assert torch.allclose(torch.stack(drawn), attention_rollout(m, x), atol=1e-6)


def test_distilled_model_either_prefix_token(x):
    m = _sharpen(DistilledVisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
                                            num_classes=5))
    r = rollout(attention_maps(m, x))
    cls, dist = attention_rollout(m, x, token=0), attention_rollout(m, x, token=1)
    assert torch.allclose(cls.flatten(1), r[:, 0, 2:], atol=1e-6)
    assert torch.allclose(dist.flatten(1), r[:, 1, 2:], atol=1e-6)
    assert not torch.allclose(cls, dist)
    with pytest.raises(VitkitError, match="0 to 1"):
        attention_rollout(m, x, token=2)


# --- capture ------------------------------------------------------------------------------

def test_captured_attention_is_softmax_qk_recomputed_by_hand(model, x):
    maps = attention_maps(model, x)
    assert maps.shape == (2, 2, 2, 65, 65)
    with torch.no_grad():
        tokens = model._pos_embed(model.patch_embed(x))
        for layer, block in enumerate(model.blocks):
            h = block.norm1(tokens)
            w_q, w_k, _ = block.attn.qkv.weight.chunk(3)
            b_q, b_k, _ = block.attn.qkv.bias.chunk(3)
            q = (h @ w_q.T + b_q).reshape(2, 65, 2, 32).transpose(1, 2)
            k = (h @ w_k.T + b_k).reshape(2, 65, 2, 32).transpose(1, 2)
            expected = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1)
            assert torch.allclose(maps[layer], expected, atol=1e-6)
            assert expected.max() > 0.2  # not near-uniform: the comparison can fail
            tokens = block(tokens)


def test_recording_leaves_logits_alone_and_removes_hooks(model, x):
    with torch.no_grad():
        before = model(x)
        seen = []
        with record_attention(model, lambda i, a: seen.append(i)):
            during = model(x)
        after = model(x)
    assert seen == [0, 1]
    assert torch.allclose(before, during, atol=1e-6) and torch.equal(before, after)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert all(m.attn_hook is None for m in attns)
    with pytest.raises(RuntimeError), record_attention(model, lambda i, a: None):
        raise RuntimeError("boom")
    assert all(m.attn_hook is None for m in attns)


def test_layer_selection_and_range(model, x):
    # unselected layers stay fused (SDPA), so only floating-point noise may differ
    assert torch.allclose(attention_maps(model, x, layers=-1)[0], attention_maps(model, x)[1], atol=1e-6)
    assert class_attention(model, x, layers=[1]).shape == (1, 2, 2, 8, 8)
    for bad in (2, -3):
        with pytest.raises(VitkitError, match=r"0 to 1"):
            attention_maps(model, x, layers=bad)


def test_bad_inputs_are_user_errors(model):
    with pytest.raises(VitkitError, match="3-channel"):
        attention_rollout(model, torch.randn(1, 1, 32, 32))
    with pytest.raises(VitkitError, match="32x32"):
        attention_rollout(model, torch.randn(1, 3, 40, 40))
    with pytest.raises(VitkitError, match=r"\[B, C, H, W\]"):
        attention_rollout(model, torch.randn(3, 32, 32))


def test_dynamic_size_takes_grid_from_input():
    m = tiny(dynamic_img_size=True)
    assert attention_rollout(m, torch.randn(1, 3, 40, 24)).shape == (1, 10, 6)
    with pytest.raises(VitkitError, match="divisible"):
        attention_rollout(m, torch.randn(1, 3, 30, 32))


# --- mean attention distance -------------------------------------------------------------

def _centres(gh: int, gw: int, ph: int, pw: int) -> np.ndarray:
    return np.array([((i + 0.5) * ph, (j + 0.5) * pw) for i in range(gh) for j in range(gw)])


def test_attention_distance_known_answers():
    gh, gw, ph, pw, prefix = 3, 5, 2, 3, 1  # non-square grid and patch: a transposed layout fails
    d = patch_distances((gh, gw), (ph, pw))
    expected = cdist(_centres(gh, gw, ph, pw), _centres(gh, gw, ph, pw))
    assert np.allclose(d.numpy(), expected)
    n = prefix + gh * gw
    on_self = torch.eye(n).expand(2, 3, n, n)
    assert torch.allclose(attention_distance(on_self, d, prefix), torch.zeros(2, 3, dtype=torch.float64))
    uniform = torch.full((2, 3, n, n), 1.0 / n)  # prefix share is dropped and the rest renormalised
    assert torch.allclose(attention_distance(uniform, d, prefix), torch.tensor(expected.mean(), dtype=torch.float64))
    to_corner = torch.zeros(1, 1, n, n)
    to_corner[..., prefix] = 1.0  # every query looks at the top-left patch
    assert np.isclose(float(attention_distance(to_corner, d, prefix)), expected[0].mean())


def test_mean_attention_distance_folds_batches(model, x):
    x3 = torch.randn(1, 3, 32, 32)
    got = mean_attention_distance(model, [x, (x3, torch.zeros(1))])
    d = patch_distances((8, 8), (4, 4))
    per_image = torch.cat([torch.stack([attention_distance(a, d, 1) for a in attention_maps(model, b)], dim=1)
                           for b in (x, x3)])  # [images, layers, heads]
    assert got.shape == (2, 2)
    assert np.allclose(got, per_image.mean(0).numpy())


# --- embeddings ---------------------------------------------------------------------------

def test_filter_components_are_the_pca_of_the_filters(model):
    comps, ratios = filter_components(model, n=5)
    assert comps.shape == (5, 3, 4, 4) and ratios.shape == (5,)
    pca = PCA(5).fit(model.patch_embed.proj.weight.detach().reshape(64, -1).numpy())
    assert np.allclose(np.abs(comps.reshape(5, -1).numpy()), np.abs(pca.components_), atol=1e-4)
    assert np.allclose(ratios.numpy(), pca.explained_variance_ratio_, atol=1e-5)
    assert filter_components(tiny(in_chans=1, patch_size=2), n=28)[0].shape == (4, 1, 2, 2)  # capped at C·P·P


def test_pos_embed_similarity_shape_and_diagonal(model):
    sim = pos_embed_similarity(model)
    assert sim.shape == (8, 8, 8, 8)
    flat = sim.reshape(64, 64)
    assert torch.allclose(flat.diagonal(), torch.ones(64), atol=1e-6)
    assert torch.allclose(flat, flat.T, atol=1e-6) and flat.min() < 0.5


# --- figures and report -------------------------------------------------------------------

def test_explain_images_writes_pngs_and_a_self_contained_report(model, x, tmp_path):
    originals = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    names = ["shirt.png", "a/b <c>.jpg"]
    out = explain_images(model, x, originals, names, [f"cls{i}" for i in range(5)], tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["b_c_attention.png", "b_c_rollout.png", "patch_embedding_filters.png",
                    "position_embedding_similarity.png", "shirt_attention.png", "shirt_rollout.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in tmp_path.glob("*.png"))
    top = out["images"][0]["top"]
    assert len(top) == 5 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    html = out["report"].read_text()
    assert html.count('src="data:image/png;base64,') == 6 and html.count("src=") == 6
    assert "://" not in html and "<link" not in html and "<script" not in html
    assert "a/b &lt;c&gt;.jpg" in html and "cls" in html and "%</td>" in html
    with pytest.raises(VitkitError, match="class names"):
        explain_images(model, x, None, names, ["only", "three", "names"], tmp_path)
    with pytest.raises(VitkitError, match="2 images"):
        explain_images(model, x, None, names[:1], None, tmp_path)


def test_attention_distance_figure(model, x, tmp_path):
    dist = attention_distance_figure(model, [x], tmp_path / "distance.png")
    assert dist.shape == (2, 2) and (dist > 0).all() and (dist < 32 * 2 ** 0.5).all()
    assert (tmp_path / "distance.png").stat().st_size > 1000


@pytest.mark.parametrize("call", [
    lambda m, x, out: attention_rollout(m, x), lambda m, x, out: attention_maps(m, x),
    lambda m, x, out: filter_components(m), lambda m, x, out: pos_embed_similarity(m),
    lambda m, x, out: model_figures(m, out), lambda m, x, out: attention_distance_figure(m, [x], out / "d.png"),
    lambda m, x, out: explain_images(m, x, None, ["a.png"], None, out)])
def test_a_model_without_patches_or_attention_is_a_clear_error(call, tmp_path):
    from vitkit.inference import prepare_for_inference
    from vitkit.models import create_model
    x = torch.randn(1, 1, 28, 28)
    for m in (create_model("resnet_mini_28").eval(), prepare_for_inference(create_model("vit_mini_patch4_28"))):
        with pytest.raises(VitkitError, match="explain reads a Vision Transformer"):
            call(m, x, tmp_path)
