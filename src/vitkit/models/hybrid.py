"""The paper's hybrid ViT (Sec. 3.1): a CNN feature map, not raw pixels, is cut into patches.

Only the embedding differs from ViT: ``HybridEmbed`` runs a convolutional stem and projects
each position of its feature map (1x1 "patches") to D dims, so the encoder, pooling and
head are the plain ``VisionTransformer``'s. Convolutions bring locality and translation
equivariance, which is why hybrids beat pure ViTs at small data and compute budgets.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import to_2tuple
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
    """CNN stem -> 1x1 projection to D; same interface as ``PatchEmbed`` ([B, H', W', D] out)."""

    def __init__(self, img_size: int | tuple[int, int] = 28, patch_size: int = 1, in_chans: int = 1,
                 embed_dim: int = 192, stem_widths: tuple[int, ...] = (32, 64, 128), strict_img_size: bool = True):
        super().__init__()
        self.backbone = ConvStem(in_chans, tuple(stem_widths))
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.feature_patch = to_2tuple(patch_size)  # patch size on the feature map (the paper uses 1)
        stride = self.backbone.stride
        self.patch_size = (stride * self.feature_patch[0], stride * self.feature_patch[1])  # in input pixels
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
        return self.proj(self.backbone(x)).permute(0, 2, 3, 1)


def hybrid_vit(stem_widths: tuple[int, ...] = (32, 64, 128), **kwargs) -> VisionTransformer:
    """A VisionTransformer whose patch embedding is :class:`HybridEmbed`."""
    def embed(img_size, patch_size, in_chans, embed_dim, strict_img_size):
        return HybridEmbed(img_size, patch_size, in_chans, embed_dim, stem_widths, strict_img_size)
    return VisionTransformer(embed_layer=embed, **kwargs)
