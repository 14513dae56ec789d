"""Models: shared layers, the Vision Transformer, its variants and the registry of names.

Each variant module registers its own names on import (as timm's model files do).
"""
from . import cait, convit, crossvit, deit, deit3, hybrid, resnet, sl_vit, tnt  # noqa: F401  (register their models)
from . import cvt, levit, pit, pvt_v2, swin  # noqa: F401  (the hierarchical and convolutional ViTs)
from . import mae  # noqa: F401  (masked-autoencoder pretraining)
from . import pretrained  # noqa: F401  (the weights published for them)
from .deit import DistilledVisionTransformer
from .hybrid import HybridEmbed, hybrid_vit
from .mae import MaskedAutoencoderViT, mae_for_encoder
from .layers import Attention, Block, DropPath, LayerScale, Mlp, PatchDropout, PatchEmbed
from .pretrained import PretrainedCfg, get_pretrained_cfg, list_pretrained, register_pretrained
from .pos_embed import resample_abs_pos_embed
from .registry import (ModelSpec, count_params, create_model, get_model_spec, list_models, model_flops,
                       model_param_count, register_model)
from .spec import BuildSpec, input_geometry, record_change, spec_of
from .resnet import ResNet
from .sl_vit import LocalitySelfAttention, ShiftedPatchEmbed, sl_vit
from .vit import VisionTransformer

__all__ = ["Attention", "Block", "DistilledVisionTransformer", "DropPath", "HybridEmbed", "LayerScale",
           "LocalitySelfAttention", "MaskedAutoencoderViT", "Mlp", "PatchDropout", "PatchEmbed", "ResNet", "ShiftedPatchEmbed",
           "VisionTransformer",
           "BuildSpec", "ModelSpec", "PretrainedCfg", "count_params", "create_model", "get_model_spec",
           "get_pretrained_cfg", "hybrid_vit", "input_geometry", "list_models", "list_pretrained", "mae_for_encoder", "model_flops",
           "model_param_count", "record_change", "register_model", "register_pretrained", "resample_abs_pos_embed", "sl_vit", "spec_of"]
