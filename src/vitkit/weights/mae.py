"""Masked-autoencoder weights in their released layouts, both ways.

- facebookresearch/mae ``.pth`` files keep the state dict under ``model``: the visualisation
  checkpoints (``mae_visualize_vit_*.pth``) hold encoder and decoder with exactly
  ``MaskedAutoencoderViT``'s names; the pretrained encoders (``mae_pretrain_vit_*.pth``) and timm's
  ``vit_*_patch16_224.mae`` hold the encoder alone, in timm's ViT names.
- Hugging Face ``ViTMAEForPreTraining`` folders: ``vit.*`` (HF's ViT names) and ``decoder.*``.

An encoder-only file read for a registered MAE name (``mae_vit_base_patch16``) gets the paper's freshly
initialised decoder, so it pretrains on; read with no name it is a plain ViT (the encoder), as timm
builds it. A file with a decoder always builds a ``MaskedAutoencoderViT``.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitkitError
from ..fileio import atomic_write, write_json
from ..models import MaskedAutoencoderViT, create_model, get_model_spec
from .checkpoint import Checkpoint
from .files import StateDict, read_json
from .hf import TABLE as HF_TABLE, config_kwargs, encoder_config, read_weights
from .keymap import fuse_qkv, rename, split_qkv

NAME = "mae_vision_transformer"  # what rebuilds an MAE of any size
_DECODER_PARTS = ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred")
_HF_DECODER_LAYERS = ("decoder.decoder_layers.", "decoder.decoder_encoder.layer.")  # hub files, transformers 5's
_PAPER_DECODER_HEADS = {512: 16}  # decoder width -> heads, the paper's (the tensors do not show the count)


def has_decoder(sd: StateDict) -> bool:
    return "decoder_embed.weight" in sd


def is_hf_mae(sd: StateDict) -> bool:
    return "decoder.decoder_embed.weight" in sd


def builds_mae(name: str | None) -> bool:
    """Whether the registered ``name`` builds a ``MaskedAutoencoderViT``."""
    if not name:
        return False
    builder = get_model_spec(name.partition(".")[0]).builder
    return isinstance(builder, type) and issubclass(builder, MaskedAutoencoderViT)


def decoder_kwargs(sd: StateDict) -> dict[str, Any]:
    """The decoder's width and depth from its tensors, and its head count where the paper's width says it."""
    width = sd["decoder_embed.weight"].shape[0]
    kwargs: dict[str, Any] = dict(decoder_embed_dim=width,
                                  decoder_depth=len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")}))
    if width in _PAPER_DECODER_HEADS:
        kwargs["decoder_num_heads"] = _PAPER_DECODER_HEADS[width]
    return kwargs


def from_state_dict(sd: StateDict, source: str, name: str | None = None) -> Checkpoint:
    """facebookresearch/mae's layout (``MaskedAutoencoderViT``'s names), with or without the decoder
    (without: see :func:`with_fresh_decoder`)."""
    if not has_decoder(sd):
        return Checkpoint(dict(sd), source, "mae", {}, name)
    kwargs = decoder_kwargs(sd)
    if "decoder_num_heads" not in kwargs and not builds_mae(name):
        warnings.warn(f"{source}: a decoder {kwargs['decoder_embed_dim']} wide is no size of the paper's and "
                      "its head count is not stored; pass a model name or decoder_num_heads=...", stacklevel=3)
    return Checkpoint(dict(sd), source, "mae", kwargs, None if builds_mae(name) else NAME)


def needs_decoder(ckpt: Checkpoint, name: str | None) -> bool:
    """An encoder's weights asked for as an MAE."""
    return builds_mae(name) and not has_decoder(ckpt.state_dict)


def with_fresh_decoder(ckpt: Checkpoint, name: str, overrides: dict[str, Any]) -> Checkpoint:
    """The encoder's tensors plus the decoder of the MAE ``name`` (with the caller's ``overrides``) at the
    encoder's size, initialised as the paper does: a pretrained encoder pretrains on, or a new decoder
    is trained to draw its reconstructions."""
    from .infer import infer_kwargs
    encoder = {k: v for k, v in infer_kwargs(ckpt.state_dict, ckpt.source).items()
               if k in ("img_size", "patch_size", "in_chans", "embed_dim", "mlp_ratio")}
    # no encoder blocks: only the decoder is wanted, and its initialisation does not depend on them
    fresh = create_model(name, **{**ckpt.kwargs, **encoder, **overrides, "depth": 0, "num_heads": 1})
    decoder = {k: v for k, v in fresh.state_dict().items() if k.startswith(_DECODER_PARTS)}
    return dataclasses.replace(ckpt, state_dict={**decoder, **ckpt.state_dict})


def from_hf(sd: StateDict, source: str, config: dict[str, Any]) -> Checkpoint:
    """A ``ViTMAEForPreTraining`` state dict (hub names or transformers 5's) -> MAE names."""
    encoder = {k[len("vit."):]: v for k, v in sd.items() if k.startswith("vit.")}
    decoder_layers, rest = {}, {}
    for key, value in sd.items():
        if key.startswith("vit."):
            continue
        prefix = next((p for p in _HF_DECODER_LAYERS if key.startswith(p)), None)
        if prefix is not None:
            decoder_layers["encoder.layer." + key[len(prefix):]] = value
        elif key.startswith("decoder."):
            rest[key[len("decoder."):]] = value
        else:
            raise VitkitError(f"{source}: tensor {key} is not part of ViTMAEForPreTraining")
    out: StateDict = {}
    for part, prefix in ((encoder, ""), (decoder_layers, "decoder_")):
        renamed, unknown = rename(part, HF_TABLE)
        if unknown:
            raise VitkitError(f"{source}: tensor {unknown[0]} is not part of ViTMAEForPreTraining")
        out.update({prefix + k: v for k, v in fuse_qkv(renamed).items()})
    out.update(rest)  # decoder_embed, mask_token, decoder_pos_embed, decoder_norm, decoder_pred: the same names
    return Checkpoint(out, source, "hf", {**decoder_kwargs(out), **_hf_kwargs(config)}, NAME)


def _hf_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    names = {"decoder_num_attention_heads": "decoder_num_heads", "norm_pix_loss": "norm_pix_loss",
             "mask_ratio": "mask_ratio"}  # the encoder's as for HF's ViT (hf.config_kwargs)
    if config.get("hidden_act", "gelu") != "gelu":
        raise VitkitError(f"config hidden_act={config['hidden_act']!r} is not supported (only 'gelu')")
    if config.get("decoder_intermediate_size", 4 * config.get("decoder_hidden_size", 1)) / config.get(
            "decoder_hidden_size", 1) != config.get("intermediate_size", 4) / config.get("hidden_size", 1):
        raise VitkitError("config: the decoder's MLP ratio differs from the encoder's, which MAE's code never does")
    return {**config_kwargs(config), **{ours: config[theirs] for theirs, ours in names.items() if theirs in config}}


def read_hf_folder(folder: Path) -> Checkpoint:
    return from_hf(read_weights(folder), str(folder), read_json(folder / "config.json"))


# --- writing ------------------------------------------------------------------------------
def _check(model: nn.Module) -> MaskedAutoencoderViT:
    if not isinstance(model, MaskedAutoencoderViT):
        raise VitkitError(f"not an MAE ({type(model).__name__}); export MAE pretraining runs")
    return model


def mae_state_dict(model: nn.Module, encoder_only: bool = False) -> StateDict:
    """The tensors under facebookresearch/mae's names (``encoder_only``: as ``mae_pretrain_vit_*.pth``)."""
    sd = {k: v.detach().contiguous() for k, v in _check(model).state_dict().items() if not k.startswith("head.")}
    return {k: v for k, v in sd.items() if not k.startswith(_DECODER_PARTS)} if encoder_only else sd


def save_mae(model: nn.Module, path: str | Path, encoder_only: bool = False) -> Path:
    """A ``.pth`` as facebookresearch/mae releases them: ``{"model": state_dict}``."""
    sd = mae_state_dict(model, encoder_only)
    return atomic_write(Path(path), lambda tmp: torch.save({"model": sd}, tmp))


def save_hf_mae(model: nn.Module, folder: str | Path) -> Path:
    """A folder ``transformers.ViTMAEForPreTraining.from_pretrained`` loads (the Hub's tensor names)."""
    from safetensors.torch import save_file
    model = _check(model)
    sd = mae_state_dict(model)
    encoder = {k: v for k, v in sd.items() if not k.startswith(_DECODER_PARTS)}
    blocks = {k[len("decoder_"):]: v for k, v in sd.items() if k.startswith("decoder_blocks.")}
    out = {"vit." + k: v for k, v in _to_hf_names(encoder).items()}
    out.update({"decoder.decoder_layers." + k[len("encoder.layer."):]: v for k, v in _to_hf_names(blocks).items()})
    out.update({"decoder." + k: v for k, v in sd.items()
                if k.startswith(_DECODER_PARTS) and not k.startswith("decoder_blocks.")})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
    write_json(folder / "config.json", _hf_config(model))
    return folder


def _to_hf_names(sd: StateDict) -> StateDict:
    renamed, unmatched = rename(split_qkv(sd), HF_TABLE, reverse=True)
    if unmatched:
        raise VitkitError(f"tensor {unmatched[0]} has no place in Hugging Face's ViTMAE")
    return renamed


def _hf_config(model: MaskedAutoencoderViT) -> dict[str, Any]:
    if model.patch_embed.img_size[0] != model.patch_embed.img_size[1]:
        raise VitkitError("HF's ViTMAE takes square images only")
    dec = model.decoder_blocks[0]
    return {"architectures": ["ViTMAEForPreTraining"], "model_type": "vit_mae", **encoder_config(model),
            "decoder_hidden_size": dec.norm1.normalized_shape[0], "decoder_num_hidden_layers": len(model.decoder_blocks),
            "decoder_num_attention_heads": dec.attn.num_heads, "decoder_intermediate_size": dec.mlp.fc1.out_features,
            "mask_ratio": model.mask_ratio, "norm_pix_loss": model.norm_pix_loss}
