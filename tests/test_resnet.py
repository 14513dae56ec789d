"""ResNets: the CNN teachers and the R50 backbone of the paper's hybrid, against independent counts."""
import pytest
import torch

import vitkit
from vitkit.models import model_param_count
from vitkit.models.resnet import StdConv2d


@pytest.mark.parametrize("name, count", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_param_counts_equal_torchvision(name, count):
    assert model_param_count(name) == count  # torchvision's published figures (same layout as timm's)


def test_r50_hybrid_backbone_equals_hf_bit_and_timm_count():
    transformers = pytest.importorskip("transformers")
    model = vitkit.create_model("vit_base_r50_s16_224")
    backbone = model.patch_embed.backbone
    cfg = transformers.BitConfig(layer_type="bottleneck", depths=[3, 4, 9], out_features=["stage3"],
                                 global_padding="same", embedding_dynamic_padding=True)
    hf = transformers.BitBackbone(cfg)  # the backbone of HF's R50+ViT-B/16 (ViTHybrid)
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in hf.parameters())
    x = torch.randn(1, 3, 224, 224)
    assert backbone.forward_features(x).shape == hf(x).feature_maps[0].shape == (1, 1024, 14, 14)
    assert model.patch_embed.grid_size == (14, 14) and model(x).shape == (1, 1000)
    assert model_param_count("vit_base_r50_s16_384") == 98_950_952  # timm's vit_base_r50_s16_384: 98.95M


def test_std_conv_standardises_each_filter():
    conv = StdConv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight
    w_std = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(w.var(dim=(1, 2, 3), unbiased=False,
                                                                         keepdim=True) + 1e-8)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, w_std, padding=1), atol=1e-5, rtol=1e-5)


def test_residual_branches_start_as_identity():
    model = vitkit.create_model("resnet_mini_28").eval()
    for block in model.layer1:
        assert torch.count_nonzero(block.bn2.weight) == 0  # the branch's last norm starts at zero
    assert torch.count_nonzero(model.bn1.weight) == model.bn1.weight.numel()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_a_vit_only_init_is_refused_not_ignored():
    with pytest.raises(ValueError, match="weight_init 'mimetic'"):
        vitkit.create_model("resnet_mini_28", weight_init="mimetic")  # attention init: a CNN has none


def test_a_cnn_exports_to_onnx_at_its_build_size(tmp_path):
    """The CNN teacher is a checkpoint like any other: `vitkit export` takes it too."""
    from vitkit.inference import OnnxClassifier, export
    model = vitkit.create_model("resnet_mini_28").eval()
    path = export(model, tmp_path / "cnn.onnx")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(OnnxClassifier(path)(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_cnn_weights_file_vitkit_wrote_loads_alone(tmp_path):
    """Its header names the model: the file works as a teacher or for eval without its folder."""
    from vitkit.train import load_checkpoint
    from vitkit.weights import save_vitkit
    model = vitkit.create_model("resnet_mini_28").eval()
    save_vitkit(model, tmp_path, classes=[str(i) for i in range(10)], mean=[0.5], std=[0.25])
    back, meta = load_checkpoint(tmp_path / "model.safetensors")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), model(x)) and meta["std"] == [0.25]
