"""SL-ViT: shifted patch tokens and locality self-attention, checked against vit-pytorch's
``vit_for_small_dataset`` (an independent implementation of the same paper)."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import vit_pytorch_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.models.sl_vit import LocalitySelfAttention, ShiftedPatchEmbed
from vitkit.weights import load_model, save_vitkit

small_dataset = vit_pytorch_file("vit_for_small_dataset")
LSA, SPT = small_dataset.LSA, small_dataset.SPT


def test_shifted_copies_move_half_a_patch_toward_each_corner():
    pe = ShiftedPatchEmbed(img_size=8, patch_size=4, in_chans=1, embed_dim=8)
    x = torch.arange(64.0).reshape(1, 1, 8, 8) + 1
    s = pe.shifted(x)
    assert s.shape == (1, 5, 8, 8)
    torch.testing.assert_close(s[0, 0], x[0, 0])
    torch.testing.assert_close(s[0, 1, 2:, 2:], x[0, 0, :-2, :-2])  # content moved down-right by 2
    assert (s[0, 1, :2] == 0).all() and (s[0, 1, :, :2] == 0).all()
    torch.testing.assert_close(s[0, 4, :-2, :-2], x[0, 0, 2:, 2:])  # and up-left
    assert s[0, 2, 2, 3] == x[0, 0, 0, 5] and s[0, 3, 3, 2] == x[0, 0, 5, 0]


def test_spt_matches_vit_pytorch_given_its_shifts():
    """Patch layout (p1 p2 c), LayerNorm and projection agree once both use the same shifted copies."""
    torch.manual_seed(0)
    ours = ShiftedPatchEmbed(img_size=8, patch_size=4, in_chans=2, embed_dim=16)
    theirs = SPT(dim=16, patch_size=4, channels=2)
    with torch.no_grad():
        for p in ours.norm.parameters():
            p.uniform_()
        theirs.to_patch_tokens[1].load_state_dict(ours.norm.state_dict())
        theirs.to_patch_tokens[2].load_state_dict(ours.proj.state_dict())
    ours.shifts = [(1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1)]  # vit-pytorch's 1-pixel shifts
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).reshape(3, 4, 16), theirs(x))


def test_lsa_matches_vit_pytorch_and_never_attends_to_itself():
    torch.manual_seed(0)
    ours = LocalitySelfAttention(32, num_heads=4, qkv_bias=False)
    theirs = LSA(32, heads=4, dim_head=8)
    with torch.no_grad():
        ours.log_scale.fill_(0.3)  # a learned value, not the initial 1/sqrt(d)
        theirs.temperature.fill_(0.3)
        theirs.to_qkv.weight.copy_(ours.qkv.weight)
        theirs.to_out[0].load_state_dict(ours.proj.state_dict())
    x = torch.randn(2, 9, 32)
    probs = []
    ours.attn_hook = lambda module, attn: probs.append(attn)
    with torch.no_grad():
        torch.testing.assert_close(ours(theirs.norm(x)), theirs(x))
    assert torch.diagonal(probs[0], dim1=-2, dim2=-1).abs().max() == 0
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, 4, 9))


def test_sl_vit_learns_its_scale_and_round_trips(tmp_path):
    m = vitkit.create_model("sl_vit_mini_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # the last block updates only the [class] token: same logits as all tokens
        torch.testing.assert_close(m(x), m.forward_head(m.forward_features(x)))
    m.train()
    m(x).sum().backward()
    assert m.blocks[0].attn.log_scale.grad is not None and m.patch_embed.norm.weight.grad is not None
    m.eval()
    save_vitkit(m, tmp_path / "sl")
    back = load_model(tmp_path / "sl").eval()
    assert isinstance(back.blocks[0].attn, LocalitySelfAttention)
    with pytest.raises(VitkitError, match="not a conv"):
        load_model(tmp_path / "sl", patch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x), atol=0, rtol=0)
        fast = vitkit.prepare_for_inference(m, precision="bf16")
        torch.testing.assert_close(fast(x).float(), m(x), atol=0.1, rtol=0.05)


def test_filters_are_the_projection_over_the_window_a_token_sees():
    """proj(patch vectors) == a stride-P conv of the image (padded by P/2) with ``filters()``, when the
    LayerNorm's gain is folded in: the placement of the five sub-filters is right."""
    torch.manual_seed(0)
    pe = ShiftedPatchEmbed(img_size=12, patch_size=4, in_chans=2, embed_dim=6)
    with torch.no_grad():
        pe.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        tokens = F.linear(pe.patch_vectors(x) * pe.norm.weight, pe.proj.weight)  # [B, 3, 3, D]
        conv = F.conv2d(F.pad(x, (2, 2, 2, 2)), pe.filters(), stride=4)  # [B, D, 3, 3]
    assert pe.filters().shape == (6, 2, 8, 8)
    torch.testing.assert_close(tokens, conv.permute(0, 2, 3, 1))


def test_sl_vit_exports_to_onnx_explains_and_refuses_hf(tmp_path):
    from vitkit.explain import explain_images
    from vitkit.inference import OnnxClassifier, export
    from vitkit.weights import save_hf

    m = vitkit.create_model("sl_vit_mini_patch4_28", depth=2).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
    out = OnnxClassifier(export(m, tmp_path / "sl.onnx"), threads=1)(x)
    assert (out - ref).abs().max().item() <= 1e-4
    report = explain_images(m, x[:1], None, ["a.png"], None, tmp_path / "explain")
    assert (tmp_path / "explain" / "patch_embedding_filters.png").stat().st_size > 1000
    assert report["images"][0]["top"]
    with pytest.raises(VitkitError, match="SL-ViT"):
        save_hf(m, tmp_path / "hf")


def test_distilled_sl_vit_round_trips_and_loads_by_name(tmp_path):
    """The distilled SL-ViT keeps both of SL-ViT's layers; a bare state dict loads under its name."""
    kwargs = dict(class_token=False, global_pool="avg", pos_embed="sincos", depth=2)
    m = vitkit.create_model("sl_vit_mini_distilled_patch4_28", **kwargs).eval()
    assert isinstance(m.patch_embed, ShiftedPatchEmbed) and isinstance(m.blocks[0].attn, LocalitySelfAttention)
    x = torch.randn(2, 1, 28, 28)
    save_vitkit(m, tmp_path / "d")
    save_file(m.state_dict(), tmp_path / "d.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "d").eval()(x), m(x), atol=0, rtol=0)
        with pytest.warns(UserWarning, match=r"not sl_vit_mini_distilled_patch4_28's size \(depth 6 vs 2"):
            named = load_model(tmp_path / "d.safetensors", "sl_vit_mini_distilled_patch4_28", num_heads=4).eval()
        torch.testing.assert_close(named(x), m(x), atol=0, rtol=0)
