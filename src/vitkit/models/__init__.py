"""Models: shared layers, the Vision Transformer, its variants and the registry of names."""
from .layers import Attention, Block, DropPath, LayerScale, Mlp, PatchEmbed
from .pos_embed import resample_abs_pos_embed
from .registry import (ModelSpec, count_params, create_model, get_model_spec, list_models, model_param_count,
                       register_model)
from .vit import VisionTransformer

__all__ = ["Attention", "Block", "DropPath", "LayerScale", "Mlp", "PatchEmbed", "VisionTransformer",
           "ModelSpec", "count_params", "create_model", "get_model_spec", "list_models", "model_param_count",
           "register_model", "resample_abs_pos_embed"]
