"""SL-ViT (Lee, Lee & Song, 2021, "Vision Transformer for Small-Size Datasets"): ViT plus two
cheap changes that give a pure ViT some of a CNN's locality when data is small.

- Shifted Patch Tokenization (SPT): each patch sees its image and four copies shifted by half a
  patch diagonally, so a token's receptive field is twice the patch; the concatenated patch
  vector is layer-normalised before the linear projection. Only the patch embedding changes.
- Locality Self-Attention (LSA): a learnable softmax temperature and no attention of a token to
  itself, which sharpens attention onto other tokens (plain ViT's attention on small data stays
  close to uniform).

Everything else is the plain ``VisionTransformer``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .deit import DistilledVisionTransformer
from .layers import Attention, PatchEmbed, PatchFormat, format_patches
from .registry import register_model
from .vit import VisionTransformer


class ShiftedPatchEmbed(PatchEmbed):
    """SPT: [image, 4 diagonal half-patch shifts] -> P×P patches -> LayerNorm -> linear to D."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, strict_img_size: bool = True,
                 flatten: bool = True, output_fmt: PatchFormat | None = None):
        super().__init__(img_size, patch_size, in_chans, embed_dim, bias, strict_img_size, flatten, output_fmt)
        patch_dim = 5 * in_chans * self.patch_size[0] * self.patch_size[1]
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, embed_dim, bias=bias)  # in place of PatchEmbed's conv
        dy, dx = self.patch_size[0] // 2, self.patch_size[1] // 2  # F.pad's (left, right, top, bottom)
        self.shifts = [(dx, -dx, dy, -dy), (-dx, dx, dy, -dy), (dx, -dx, -dy, dy), (-dx, dx, -dy, dy)]

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 5C, H, W]: the image, then its copies moved half a patch toward each
        corner (zeros where they move in from outside)."""
        return torch.cat([x] + [F.pad(x, s) for s in self.shifts], dim=1)

    def patch_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, H/P, W/P, P·P·5C], flattened as vit-pytorch does: (p1 p2 c)."""
        x = self.shifted(x)
        b, c, h, w = x.shape
        (ph, pw), (gh, gw) = self.patch_size, (h // self.patch_size[0], w // self.patch_size[1])
        return x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, gh, gw, ph * pw * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return format_patches(self.proj(self.norm(self.patch_vectors(x))), self.output_fmt)

    def filters(self) -> torch.Tensor:
        """The projection as filters over the image, [D, C, P + 2·P/2, P + 2·P/2]: the five P×P filters
        (LayerNorm gain folded in) placed where their shifted copies read the image. What the paper's
        Fig. 7 shows for a plain ViT's conv, for a token that sees twice its patch."""
        (ph, pw), c, d = self.patch_size, self.in_chans, self.proj.out_features
        w = (self.proj.weight * self.norm.weight).reshape(d, ph, pw, 5, c).permute(0, 3, 4, 1, 2)
        dy, dx = ph // 2, pw // 2
        out = w.new_zeros(d, c, ph + 2 * dy, pw + 2 * dx)
        for copy, (left, _, top, _) in enumerate([(0, 0, 0, 0)] + self.shifts):
            oy, ox = dy - top, dx - left  # a copy moved down by `top` reads the image `top` rows higher
            out[:, :, oy:oy + ph, ox:ox + pw] += w[:, copy]
        return out


class LocalitySelfAttention(Attention):
    """LSA: softmax(mask(QKᵀ·s)) with a learnable scale s (1/√d at first) and the diagonal masked out."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any):
        super().__init__(dim, num_heads, **kwargs)
        self.log_scale = nn.Parameter(torch.tensor(math.log(self.scale)))

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = (q * self.log_scale.exp().to(q.dtype)) @ k.transpose(-2, -1)
        m, n = scores.shape[-2:]  # query i is token i (queries are a prefix of the tokens)
        rows = torch.arange(m, device=scores.device)  # (not torch.eye: ONNX Runtime has no boolean EyeLike)
        self_mask = rows[:, None] == torch.arange(n, device=scores.device)
        return scores.masked_fill(self_mask, float("-inf")).softmax(dim=-1)

    def _use_fused(self, x: torch.Tensor) -> bool:
        return False  # SDPA has no learnable scale; the explicit path is the fast one on CPUs anyway


# SL-ViT is a ViT with two layers swapped, and with DeiT's distillation token too; partials, so that
# loaders see the class each builds
sl_vit = partial(VisionTransformer, embed_layer=ShiftedPatchEmbed, attn_layer=LocalitySelfAttention)
sl_vit_distilled = partial(DistilledVisionTransformer, embed_layer=ShiftedPatchEmbed, attn_layer=LocalitySelfAttention)


_MINI_28 = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                mlp_ratio=2.0)
register_model("sl_vit_mini_patch4_28", sl_vit,
               "SL-ViT for 28x28 grayscale: vit_mini_patch4_28 with shifted patch tokens and locality attention",
               **_MINI_28)
register_model("sl_vit_mini_patch4_gap_28", sl_vit,
               "the demo's pure ViT and vitkit train's default: sl_vit_mini_patch4_28 with mean pooling ('gap', no "
               "[class] token) and fixed sin-cos position embeddings",
               **_MINI_28, class_token=False, global_pool="avg", pos_embed="sincos")
register_model("sl_vit_mini_distilled_patch4_28", sl_vit_distilled,
               "sl_vit_mini_patch4_28 with DeiT's distillation token and head", **_MINI_28)
