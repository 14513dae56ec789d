"""MAE (He et al., 2021): the model against the reference algorithm's outputs, and its invariants.

Oracle: tests/fixtures/family/mae_tiny_* (the paper's models_mae.py on timm blocks, perturbed weights,
images and masking noise, with its loss, pred, mask and encoder latent; see that folder's README).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.errors import VitkitError
from vitkit.models import MaskedAutoencoderViT, VisionTransformer, mae_for_encoder, model_param_count
from vitkit.models.pos_embed import mae_sincos_2d_pos_embed

FIXTURES = ["mae_tiny_normpix", "mae_tiny_gray"]


def reference(fixtures_dir, folder):
    d = fixtures_dir / "family" / folder
    cfg = json.loads((d / "config.json").read_text())
    inputs = load_file(d / "input.safetensors")
    return cfg, load_file(d / "weights.safetensors"), inputs["input"], inputs["noise"], load_file(
        d / "outputs.safetensors")


def fixture_model(fixtures_dir, folder) -> tuple[MaskedAutoencoderViT, torch.Tensor, torch.Tensor, dict]:
    cfg, weights, images, noise, outputs = reference(fixtures_dir, folder)
    model = MaskedAutoencoderViT(**cfg["kwargs"]).eval()
    model.load_state_dict(weights, strict=True)  # the reference's own names, every tensor used
    return model, images, noise, outputs


@pytest.mark.parametrize("folder", FIXTURES)
def test_loss_pred_mask_and_latent_match_the_reference(fixtures_dir, folder):
    model, images, noise, want = fixture_model(fixtures_dir, folder)
    with torch.no_grad():
        loss, pred, mask = model(images, mask_ratio=0.75, noise=noise)
        latent, _, _ = model.forward_encoder(images, 0.75, noise)
    torch.testing.assert_close(loss.reshape(1), want["loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(pred, want["pred"], atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, want["mask"], atol=0, rtol=0)
    torch.testing.assert_close(latent, want["latent"], atol=1e-5, rtol=0)


def test_masking_keeps_the_lowest_noise_and_marks_the_rest_removed():
    x = torch.arange(8.0).reshape(1, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6]])
    kept, mask, restore = MaskedAutoencoderViT.random_masking(x, 0.75, noise)
    assert kept.flatten().tolist() == [1.0, 5.0]  # int(8 * 0.25) = 2 kept, in the order of their noise
    assert mask.tolist() == [[1, 0, 1, 1, 1, 0, 1, 1]]
    assert torch.equal(torch.argsort(torch.argsort(noise, 1), 1), restore)


def test_the_encoder_never_sees_a_masked_patch():
    """Changing a removed patch's pixels leaves the latent unchanged; changing a kept one does not."""
    model = vitkit.create_model("mae_vit_mini_patch4_28").eval()
    images, noise = torch.randn(1, 1, 28, 28), torch.rand(1, 49)
    with torch.no_grad():
        latent, mask, _ = model.forward_encoder(images, 0.75, noise)
        removed, kept = int(mask[0].argmax()), int(mask[0].argmin())
        for patch, should_change in ((removed, False), (kept, True)):
            changed = images.clone()
            r, c = divmod(patch, 7)
            changed[..., 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 5.0
            other, _, _ = model.forward_encoder(changed, 0.75, noise)
            assert torch.equal(other, latent) != should_change


def test_a_shifted_patch_encoder_is_refused_for_leaking_masked_pixels():
    with pytest.raises(VitkitError, match="plain patch embedding"):
        vitkit.create_model("mae_vision_transformer", embed_layer=vitkit.models.ShiftedPatchEmbed,
                            img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="leak masked patches"):
        mae_for_encoder("sl_vit_mini_patch4_28")


def test_any_plain_vit_can_be_the_encoder():
    model = mae_for_encoder("vit_mini_patch4_28", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    vit = vitkit.create_model("vit_mini_patch4_28")
    assert model.embed_dim == vit.embed_dim and len(model.blocks) == len(vit.blocks)
    assert model.build_spec.name == "mae_vision_transformer"
    loss, pred, mask = model(torch.randn(2, 1, 28, 28))
    assert pred.shape == (2, 49, 16) and mask.sum() == 2 * (49 - int(49 * 0.25)) and loss.ndim == 0


def test_sincos_embeddings_are_maes_and_patchify_is_channels_last():
    """MAE's own numpy code (get_2d_sincos_pos_embed), written out here, as the oracle."""
    def one_axis(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), axis=0)  # MAE's meshgrid(grid_w, grid_h)
    want = np.concatenate([np.zeros((1, 16)), np.concatenate([one_axis(8, grid[0]), one_axis(8, grid[1])], 1)])
    torch.testing.assert_close(mae_sincos_2d_pos_embed((5, 5), 16)[0], torch.tensor(want).float())

    model = vitkit.create_model("mae_vision_transformer", img_size=8, patch_size=4, in_chans=3, embed_dim=16,
                                depth=1, num_heads=2, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    torch.testing.assert_close(model.decoder_pos_embed[0], mae_sincos_2d_pos_embed((2, 2), 8)[0])
    images = torch.randn(2, 3, 8, 8)
    patches = model.patchify(images)
    assert torch.equal(patches[1, 3].reshape(4, 4, 3), images[1, :, 4:, 4:].permute(1, 2, 0))
    assert torch.equal(model.unpatchify(patches), images)


def test_the_loss_counts_only_removed_patches():
    model = vitkit.create_model("mae_vit_mini_patch4_28")
    images, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    _, pred, mask = model(images, noise=noise)
    perfect = torch.where(mask.bool().unsqueeze(-1), model.patchify(images), pred)  # right where removed
    assert model.forward_loss(images, perfect, mask).item() == pytest.approx(0.0, abs=1e-10)


def test_the_encoder_fine_tunes_with_average_pooling_and_fc_norm():
    model = vitkit.create_model("mae_vit_mini_patch4_28").eval()
    encoder = model.encoder(num_classes=10)
    assert type(encoder) is VisionTransformer and encoder.global_pool == "avg"
    assert isinstance(encoder.fc_norm, torch.nn.LayerNorm) and isinstance(encoder.norm, torch.nn.Identity)
    assert isinstance(encoder.pos_embed, torch.nn.Parameter)  # learnable from here on, as the paper fine-tunes
    with torch.no_grad():
        noise = torch.rand(1, 49)
        noise[0, :] = torch.linspace(0, 1, 49)
        latent, _, _ = model.forward_encoder(images := torch.randn(1, 1, 28, 28), 0.0, noise)
        tokens = encoder.blocks(encoder.embed(images))
        torch.testing.assert_close(model.norm(tokens), latent)  # mask ratio 0: the encoder's own tokens
    rebuilt = vitkit.create_model(encoder.build_spec.name, **encoder.build_spec.kwargs)
    assert rebuilt.state_dict().keys() == encoder.state_dict().keys()


def test_registered_sizes_are_the_papers():
    assert model_param_count("mae_vit_base_patch16") == pytest.approx(111.9e6, rel=0.01)  # encoder 85.8M + decoder
    assert model_param_count("mae_vit_large_patch16") == pytest.approx(329.5e6, rel=0.01)
    mini = vitkit.create_model("mae_vit_mini_patch4_28")
    decoder = sum(p.numel() for n, p in mini.named_parameters() if n.startswith(("decoder", "mask_token")))
    assert decoder < 0.15 * sum(p.numel() for p in mini.parameters())  # a light decoder for small images


# --- released layouts ------------------------------------------------------------------------------------
TINY = dict(num_heads=2, decoder_num_heads=2)  # what a .pth does not store; width 32 has no paper head count


def outputs_of(model, images, noise):
    with torch.no_grad():
        loss, pred, mask = model(images, mask_ratio=0.75, noise=noise)
        latent, _, _ = model.forward_encoder(images, 0.75, noise)
    return loss.reshape(1), pred, mask, latent


def assert_reproduces(model, images, noise, want):
    for got, key in zip(outputs_of(model.eval(), images, noise), ("loss", "pred", "mask", "latent")):
        torch.testing.assert_close(got, want[key], atol=1e-5, rtol=0, msg=key)


def test_a_visualisation_checkpoint_loads_with_its_decoder(tmp_path, fixtures_dir):
    _, weights, images, noise, want = reference(fixtures_dir, "mae_tiny_gray")
    torch.save({"model": weights, "epoch": 799}, tmp_path / "mae_visualize_vit_tiny.pth")
    with pytest.warns(UserWarning, match="head count is not stored"):  # the paper's decoders are 512 wide
        model = vitkit.create_model(checkpoint=tmp_path / "mae_visualize_vit_tiny.pth", **TINY)
    assert type(model) is MaskedAutoencoderViT and model.checkpoint_meta["format"] == "mae"
    assert_reproduces(model, images, noise, want)


@pytest.mark.parametrize("layout", ["mae_pretrain.pth", "timm.mae.safetensors"])
def test_an_encoder_only_file_is_the_encoder_or_an_mae_with_a_fresh_decoder(tmp_path, fixtures_dir, layout):
    from safetensors.torch import save_file
    cfg, weights, images, noise, want = reference(fixtures_dir, "mae_tiny_normpix")
    encoder = {k: v for k, v in weights.items() if not k.startswith(("decoder", "mask_token"))}
    path = tmp_path / layout
    if layout.endswith(".pth"):
        torch.save({"model": encoder}, path)  # facebookresearch/mae's mae_pretrain_vit_*.pth
    else:
        save_file(encoder, path)  # timm's vit_*_patch16_224.mae: the same names, no wrapper
    vit = vitkit.create_model(checkpoint=path, num_heads=2)
    assert type(vit) is VisionTransformer and vit.num_classes == 0
    mae = vitkit.create_model("mae_vision_transformer", checkpoint=path, **TINY,
                              **{k: cfg["kwargs"][k] for k in ("decoder_embed_dim", "decoder_depth", "norm_pix_loss")})
    assert type(mae) is MaskedAutoencoderViT
    latent = outputs_of(mae.eval(), images, noise)[3]
    torch.testing.assert_close(latent, want["latent"], atol=1e-5, rtol=0)  # the encoder is the reference's
    torch.testing.assert_close(mae.decoder_pos_embed, mae_sincos_2d_pos_embed((8, 8), 16))  # a fresh decoder


def test_mae_layout_round_trips(tmp_path, fixtures_dir):
    from vitkit.weights.mae import save_mae
    model, images, noise, want = fixture_model(fixtures_dir, "mae_tiny_normpix")
    save_mae(model, tmp_path / "full.pth")
    save_mae(model, tmp_path / "encoder.pth", encoder_only=True)
    stored = torch.load(tmp_path / "full.pth", weights_only=True)["model"]
    assert stored.keys() == load_file(fixtures_dir / "family/mae_tiny_normpix/weights.safetensors").keys()
    assert not any(k.startswith("decoder") for k in torch.load(tmp_path / "encoder.pth", weights_only=True)["model"])
    with pytest.warns(UserWarning, match="head count is not stored"):
        back = vitkit.create_model(checkpoint=tmp_path / "full.pth", **TINY, norm_pix_loss=True)
    assert_reproduces(back, images, noise, want)


def tiny_hf_mae(norm_pix_loss: bool = True):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=16, patch_size=4, num_channels=3, decoder_hidden_size=16,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=32,
                          norm_pix_loss=norm_pix_loss, layer_norm_eps=1e-6, mask_ratio=0.75)
    torch.manual_seed(3)
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # every tensor off its initial value, so a dropped or misnamed one shows
        for p in model.state_dict().values():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_outputs(model, images, noise):
    with torch.no_grad():
        out = model(pixel_values=images, noise=noise)
    return out.loss.reshape(1), out.logits, out.mask


def test_hugging_face_vitmae_folders_load_and_export(tmp_path):
    from transformers import ViTMAEForPreTraining
    from vitkit.weights.mae import save_hf_mae
    hf = tiny_hf_mae()
    hf.save_pretrained(tmp_path / "hf")
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    want = hf_outputs(hf, images, noise)
    model = vitkit.create_model(checkpoint=tmp_path / "hf").eval()
    assert type(model) is MaskedAutoencoderViT and model.norm_pix_loss
    got = outputs_of(model, images, noise)[:3]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    save_hf_mae(model, tmp_path / "back")
    again = ViTMAEForPreTraining.from_pretrained(tmp_path / "back").eval()
    for a, b in zip(hf_outputs(again, images, noise), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_an_mae_checkpoint_folder_rebuilds_the_mae(tmp_path, fixtures_dir):
    from vitkit.weights import save_vitkit
    model = vitkit.create_model("mae_vit_mini_patch4_28", norm_pix_loss=True)
    save_vitkit(model, tmp_path / "m")
    back = vitkit.create_model(checkpoint=tmp_path / "m")
    assert back.build_spec == model.build_spec
    images, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    for a, b in zip(outputs_of(back.eval(), images, noise), outputs_of(model.eval(), images, noise)):
        assert torch.equal(a, b)
