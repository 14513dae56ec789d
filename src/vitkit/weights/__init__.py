"""Pretrained weights: read timm, Hugging Face, Google .npz and vitkit checkpoints; write them back.

Every reader turns its layout into timm-named tensors (a :class:`Checkpoint`), and one
builder infers the architecture from them, so a format is only a renaming table and a
few tensor reshapes.
"""
from .checkpoint import Checkpoint
from .convert import convert
from .hf import save_hf, to_hf
from .native import save_vitkit
from .read import load_model, read_checkpoint
from .resample import resample_patch_embed
from .runnable import assumed_normalisation, load_checkpoint
from .timm import save_timm

__all__ = ["Checkpoint", "assumed_normalisation", "convert", "load_checkpoint", "load_model", "read_checkpoint",
           "resample_patch_embed", "save_hf", "save_timm", "save_vitkit", "to_hf"]
