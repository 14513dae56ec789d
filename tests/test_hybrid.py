"""The hybrid ViT: a CNN stem's feature map, cut into 1x1 patches, feeds the plain ViT encoder."""
import pytest
import torch

import vitkit
from vitkit.errors import VitkitError
from vitkit.models import VisionTransformer
from vitkit.models.hybrid import HybridEmbed
from vitkit.train.finetune import init_backbone
from vitkit.weights import load_model, save_vitkit


def test_hybrid_shapes_and_grid():
    m = vitkit.create_model("vit_hybrid_mini_28").eval()
    assert isinstance(m, VisionTransformer) and isinstance(m.patch_embed, HybridEmbed)
    assert m.patch_embed.grid_size == (7, 7) and m.patch_embed.patch_size == (4, 4)
    x = torch.randn(3, 1, 28, 28)
    assert m.patch_embed(x).shape == (3, 7, 7, 192)
    assert m.forward_features(x).shape == (3, 49, 192) and m(x).shape == (3, 10)
    keys = m.state_dict().keys()
    assert "patch_embed.backbone.0.0.weight" in keys and "patch_embed.proj.weight" in keys
    assert "blocks.3.attn.qkv.weight" in keys


def test_hybrid_checkpoint_round_trip_and_resolution_change(tmp_path):
    m = vitkit.create_model("vit_hybrid_mini_28").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics must survive the round trip too
        m.patch_embed.backbone[0][1].running_mean.uniform_()
    save_vitkit(m, tmp_path / "h", classes=[str(i) for i in range(10)])
    back = load_model(tmp_path / "h").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x), atol=0, rtol=0)
    big = load_model(tmp_path / "h", img_size=56).eval()  # 7x7 -> 14x14 tokens, pos-embed resampled
    assert big.patch_embed.grid_size == (14, 14) and big.pos_embed.shape == (1, 196, 192)
    assert big(torch.randn(1, 1, 56, 56)).shape == (1, 10)


def test_r50_hybrid_checkpoint_round_trip(tmp_path):
    """The ResNet backbone's tensors (patch_embed.backbone.*) do not fool architecture inference."""
    m = vitkit.create_model("vit_base_r50_s16_224", depth=1, img_size=64).eval()  # small, same layout
    with torch.no_grad():
        m.patch_embed.backbone.layer1[0].bn1.weight.uniform_()
    save_vitkit(m, tmp_path / "r50")
    back = load_model(tmp_path / "r50").eval()
    assert back.patch_embed.in_chans == 3 and back.patch_embed.grid_size == (4, 4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x), atol=0, rtol=0)


def test_resnet_hybrid_backbone_is_the_cnn_teachers_stages():
    """vit_hybrid_resnet_mini_28 runs resnet_mini_28's three stages: a trained teacher's weights fit it."""
    cnn = vitkit.create_model("resnet_mini_28").eval()
    m = vitkit.create_model("vit_hybrid_resnet_mini_28").eval()
    assert m.patch_embed.grid_size == (7, 7) and m.patch_embed.patch_size == (4, 4)
    weights = {k: v for k, v in cnn.state_dict().items() if not k.startswith("fc.")}
    m.patch_embed.backbone.load_state_dict(weights, strict=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m.patch_embed.backbone.forward_features(x), cnn.forward_features(x))
        assert m.patch_embed(x).shape == (2, 7, 7, 128) and m(x).shape == (2, 10)


def test_backbone_from_a_trained_cnn_checkpoint(tmp_path):
    """``backbone_from`` (recipe field) loads a CNN run's stages into the hybrid, its classifier left out."""
    cnn = vitkit.create_model("resnet_mini_28").eval()
    with torch.no_grad():
        cnn.layer2[0].bn1.running_var.uniform_(0.5, 2.0)
    save_vitkit(cnn, tmp_path / "cnn", classes=[str(i) for i in range(10)])
    m = vitkit.create_model("vit_hybrid_resnet_mini_28").eval()
    init_backbone(m, tmp_path / "cnn")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m.patch_embed.backbone.forward_features(x), cnn.forward_features(x))
    with pytest.raises(VitkitError, match="has no CNN backbone"):
        init_backbone(vitkit.create_model("vit_mini_patch4_28"), tmp_path / "cnn")
    with pytest.raises(VitkitError, match="missing tensor"):  # the conv-stem hybrid's stages are not a ResNet's
        init_backbone(vitkit.create_model("vit_hybrid_mini_28"), tmp_path / "cnn")


def test_hybrid_size_off_the_stride_is_refused_and_hybrids_do_not_export_to_hf(tmp_path):
    import pytest
    from vitkit.errors import VitkitError
    from vitkit.weights import save_hf
    with pytest.raises(ValueError, match="multiple of 4x4"):
        vitkit.create_model("vit_hybrid_resnet_mini_28", img_size=30)  # 8x8 features vs a 7x7 grid otherwise
    with pytest.raises(VitkitError, match="hybrid"):
        save_hf(vitkit.create_model("vit_base_r50_s16_224", depth=1, img_size=64), tmp_path / "hf")
    with pytest.raises(VitkitError, match="not a ViT"):
        save_hf(vitkit.create_model("resnet_mini_28"), tmp_path / "hf2")


def test_explain_leaves_out_pixel_filters_for_a_hybrid(tmp_path):
    """A hybrid's patch projection reads CNN feature channels: there are no image filters to draw."""
    from vitkit.explain import model_figures
    figures = model_figures(vitkit.create_model("vit_hybrid_mini_28"), tmp_path)
    assert set(figures) == {"pos_embed"} and figures["pos_embed"].is_file()
