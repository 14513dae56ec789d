"""The paper's hybrid ViT (Sec. 3.1): a CNN feature map, not raw pixels, is cut into patches.

Only the embedding differs from ViT: ``HybridEmbed`` runs a CNN and projects each
position of its feature map (1x1 "patches") to D dims, so the encoder, pooling and head
are the plain ``VisionTransformer``'s. Convolutions bring locality and translation
equivariance, which is why hybrids beat pure ViTs at small data and compute budgets.
The paper's backbone is a ResNet-50 (GroupNorm, standardised convolutions) cut after
stage 3 (stride 16); for 28 px images a 3-layer conv stem (stride 4) is enough.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import PatchFormat, format_patches, to_2tuple
from .registry import register_model
from .resnet import ResNet
from .vit import VisionTransformer


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvStem(nn.Sequential):
    """3x3 conv-BN-ReLU layers; each entry of ``widths`` after the first halves the resolution."""

    def __init__(self, in_chans: int, widths: tuple[int, ...]):
        layers, cin = [], in_chans
        for i, w in enumerate(widths):
            layers.append(conv_bn_relu(cin, w, 1 if i == 0 else 2))
            cin = w
        super().__init__(*layers)
        self.out_chans = cin
        self.stride = 2 ** (len(widths) - 1)


class HybridEmbed(nn.Module):
    """CNN backbone -> patches of its feature map projected to D; ``PatchEmbed``'s interface and output formats.

    ``backbone`` is a :class:`ResNet`'s keyword arguments (its stages up to the feature
    map used); without it, a :class:`ConvStem` of ``stem_widths``.
    """

    def __init__(self, img_size: int | tuple[int, int] = 28, patch_size: int = 1, in_chans: int = 1,
                 embed_dim: int = 192, stem_widths: tuple[int, ...] = (32, 64, 128), strict_img_size: bool = True,
                 backbone: dict[str, Any] | None = None, output_fmt: PatchFormat = "NLC"):
        super().__init__()
        self.output_fmt = output_fmt
        if backbone is not None:
            self.backbone = ResNet(in_chans=in_chans, num_classes=0, **backbone)
        else:
            self.backbone = ConvStem(in_chans, tuple(stem_widths))
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.feature_patch = to_2tuple(patch_size)  # patch size on the feature map (the paper uses 1)
        stride = self.backbone.stride
        self.patch_size = (stride * self.feature_patch[0], stride * self.feature_patch[1])  # in input pixels
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(f"a hybrid's image size must be a multiple of its patch size in pixels "
                             f"(backbone stride x patch): {self.img_size[0]}x{self.img_size[1]} is not a "
                             f"multiple of {self.patch_size[0]}x{self.patch_size[1]}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(self.backbone.out_chans, embed_dim, self.feature_patch, self.feature_patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(f"model expects {self.in_chans} input channels, got {c}")
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f"model expects {self.img_size[0]}x{self.img_size[1]} input, got {h}x{w}")
        features = getattr(self.backbone, "forward_features", self.backbone)(x)
        return format_patches(self.proj(features).permute(0, 2, 3, 1), self.output_fmt)


def hybrid_vit(stem_widths: tuple[int, ...] = (32, 64, 128), backbone: dict[str, Any] | None = None,
               **kwargs: Any) -> VisionTransformer:
    """A VisionTransformer whose patch embedding is :class:`HybridEmbed`."""
    def embed(img_size, patch_size, in_chans, embed_dim, strict_img_size, output_fmt):
        return HybridEmbed(img_size, patch_size, in_chans, embed_dim, stem_widths, strict_img_size, backbone,
                           output_fmt)
    return VisionTransformer(embed_layer=embed, **kwargs)


# --- registry: the paper's R50+ViT-B/16 (timm's names) and a small one for 28 px ------------
R50_STAGES_1_TO_3 = dict(block="bottleneck", layers=(3, 4, 9), widths=(64, 128, 256), norm="group", std_conv=True)
for _res in (224, 384):
    register_model(f"vit_base_r50_s16_{_res}", hybrid_vit,
                   f"R50+ViT-B/16 hybrid at {_res}px: ResNet-50 stages 1-3 (GN, WS; stride 16) -> 1x1 patches",
                   img_size=_res, patch_size=1, embed_dim=768, depth=12, num_heads=12, backbone=R50_STAGES_1_TO_3)
register_model("vit_hybrid_mini_28", hybrid_vit,
               "hybrid for 28x28 grayscale: 3-layer conv stem (stride 4) -> 7x7 tokens, D192 x 4 blocks",
               img_size=28, patch_size=1, in_chans=1, num_classes=10, embed_dim=192, depth=4, num_heads=6,
               mlp_ratio=2.0, class_token=False, global_pool="avg", stem_widths=(32, 64, 128))
register_model("vit_hybrid_resnet_mini_28", hybrid_vit,
               "hybrid for 28x28 grayscale: resnet_mini_28's three stages (stride 4) -> 7x7 tokens, D128 x 4 blocks",
               img_size=28, patch_size=1, in_chans=1, num_classes=10, embed_dim=128, depth=4, num_heads=4,
               mlp_ratio=2.0, class_token=False, global_pool="avg",
               backbone=dict(block="basic", layers=(2, 2, 2), widths=(32, 64, 128), stem="small", stem_width=32))
