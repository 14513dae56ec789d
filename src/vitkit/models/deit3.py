"""DeiT III (Touvron et al., 2022, "DeiT III: Revenge of the ViT"): the plain ViT, with timm's names.

Architecturally two changes to ViT, both keywords of ``VisionTransformer``: LayerScale on every
residual branch (``init_values``, from CaiT) and position embeddings for the patch tokens only
(``no_embed_class``), added before [class] joins. The rest of DeiT III is its training recipe
(3-Augment, simple random crop, binary cross-entropy), which is not a model's business.
"""
from __future__ import annotations

from .registry import SMALL_SIZES, register_model
from .vit import VisionTransformer

# CaiT's rule for LayerScale's initial value (Sec. 3.1): 0.1 up to depth 18, 1e-5 at 24, 1e-6 deeper;
# DeiT III uses 1e-6 at every size.
_SIZES = {  # (embed_dim, depth, num_heads), resolutions timm registers
    "small": ((384, 12, 6), (224, 384)),
    "medium": ((512, 12, 8), (224,)),
    "base": ((768, 12, 12), (224, 384)),
    "large": ((1024, 24, 16), (224, 384)),
    "huge": ((1280, 32, 16), (224,)),
}
for _size, ((_dim, _depth, _heads), _resolutions) in _SIZES.items():
    _patch = 14 if _size == "huge" else 16
    for _res in _resolutions:
        register_model(f"deit3_{_size}_patch{_patch}_{_res}", VisionTransformer,
                       f"DeiT III-{_size[0].upper()}/{_patch} at {_res}px: LayerScale, no position embedding on [class]",
                       img_size=_res, patch_size=_patch, embed_dim=_dim, depth=_depth, num_heads=_heads,
                       no_embed_class=True, init_values=1e-6)
register_model("deit3_mini_patch4_28", VisionTransformer,
               "DeiT III layout for 28x28 grayscale, patch 4 (vit_mini's size; LayerScale 0.1, CaiT's value at this depth)",
               img_size=28, patch_size=4, in_chans=1, num_classes=10, no_embed_class=True, init_values=0.1,
               **SMALL_SIZES["mini"])
