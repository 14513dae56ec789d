"""The Vision Transformer (Dosovitskiy et al., 2020), with timm's parameter names.

image -> patches (conv, kernel = stride = P) -> [class] token + 1-D position embeddings
(learned, or fixed 2-D sin-cos) -> pre-LN Transformer blocks -> LayerNorm -> pool ([class]
token, mean of patch tokens, or attention from a learned query) -> optional tanh pre-logits
layer -> linear head.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import nn

from .layers import (Attention, AttentionPoolLatent, Block, PatchDropout, PatchEmbed, PatchFormat, feature_take_indices,
                     patch_maps)
from .pos_embed import resample_abs_pos_embed, sincos_2d_pos_embed
from .spec import record_change

GlobalPool = Literal["token", "avg", "map", ""]
PosEmbed = Literal["learn", "sincos"]
WEIGHT_INITS = ("", "mimetic")  # and "skip": no init, for weights about to be loaded


class VisionTransformer(nn.Module):
    """ViT. Keyword names match ``timm.models.vision_transformer.VisionTransformer``.

    ``global_pool='avg'`` moves the final norm after pooling (``fc_norm``) as timm does;
    ``'map'`` pools by attention from a learned query (``attn_pool``, timm's names);
    ``representation_size`` adds the paper's pretraining pre-logits layer (Linear + tanh);
    ``dynamic_img_size`` accepts any input size whose sides divide by the patch size,
    resampling the position embeddings on the fly. ``embed_layer`` swaps the patch
    embedding (the hybrid's CNN stem); it takes PatchEmbed's keyword arguments. ``attn_layer``
    swaps every block's attention for a subclass of ``Attention`` (SL-ViT's locality attention).
    ``patch_drop_rate`` trains on a random share of each image's patch tokens (``PatchDropout``).
    ``pos_embed="sincos"`` fixes the position embeddings to 2-D sin-cos ones (a buffer, still saved
    as ``pos_embed``; prefix tokens get zeros, as in MAE) instead of learning them.
    ``no_embed_class`` (DeiT III) adds position embeddings to the patch tokens only, before the
    prefix tokens join, so a grid resampled to any size leaves [class] untouched.
    ``weight_init="mimetic"`` starts attention from the products pretrained ViTs learn
    (``Attention.init_mimetic``); ``"skip"`` leaves parameters uninitialised for loading.
    ``head_norm`` puts a BatchNorm without affine parameters before the head (MAE's linear probe:
    the features of a frozen encoder are badly scaled for a linear classifier).
    """

    extra_tokens = 0  # prefix tokens a variant places after [class] (DeiT's distillation token)

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: GlobalPool = "token", embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, class_token: bool = True, no_embed_class: bool = False,
                 fc_norm: bool | None = None,
                 representation_size: int | None = None, dynamic_img_size: bool = False,
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, patch_drop_rate: float = 0.0,
                 norm_eps: float = 1e-6, pos_embed: PosEmbed = "learn",
                 weight_init: str = "", embed_layer: Callable[..., nn.Module] = PatchEmbed,
                 attn_layer: type[Attention] = Attention, head_norm: bool = False):
        super().__init__()
        if global_pool not in ("token", "avg", "map", ""):
            raise ValueError(f"global_pool must be 'token', 'avg', 'map' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.num_prefix_tokens = int(class_token) + self.extra_tokens
        self.no_embed_class = no_embed_class
        # prefix tokens that have position embeddings: none in DeiT III's layout
        self.pos_embed_prefix = 0 if no_embed_class else self.num_prefix_tokens
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                       embed_dim=embed_dim, strict_img_size=not dynamic_img_size, output_fmt="NHWC")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.pos_embed_prefix,
                                                      embed_dim))
        else:
            prefix = torch.zeros(1, self.pos_embed_prefix, embed_dim)
            self.register_buffer("pos_embed", torch.cat([prefix, sincos_2d_pos_embed(self.grid_size, embed_dim)], 1))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.patch_drop: nn.Module = nn.Identity()
        self.set_patch_drop_rate(patch_drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear over depth (DeiT)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, proj_drop_rate, attn_drop_rate, r, norm_eps,
                  attn_layer)
            for r in rates])
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.attn_pool = (AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps)
                          if global_pool == "map" else None)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.pre_logits = nn.Identity()
        if representation_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(embed_dim, representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
            self.num_features = representation_size
        self.head_drop = nn.Dropout(drop_rate)
        self.head_norm = head_norm
        self.head = (self.new_head() if head_norm else  # (a plain head drawn as before: seeded runs stay the same)
                     nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())
        if weight_init != "skip":
            self.init_weights(weight_init)

    def init_weights(self, mode: str = "") -> None:
        """timm's default: truncated normal (std 0.02) for linears and pos_embed, zero biases;
        ``mode="mimetic"`` then gives every attention layer ``Attention.init_mimetic``."""
        if mode not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {', '.join(map(repr, WEIGHT_INITS))}, got {mode!r}")
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if mode == "mimetic":
            for block in self.blocks:
                block.attn.init_mimetic()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None,
                         zero_init: bool = False) -> None:
        """Swap the head for ``num_classes`` outputs; ``zero_init`` is the paper's fine-tuning head.

        The build spec follows, so that a checkpoint saved afterwards rebuilds this model."""
        if global_pool is not None:
            if global_pool == "map" and self.attn_pool is None:
                raise ValueError("attention pooling cannot be added to a model built without it: build it with "
                                 "global_pool='map'")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs the [class] token this model was built without")
            if global_pool != "map":
                self.attn_pool = None
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = self.new_head(zero_init)
        record_change(self, num_classes=num_classes, global_pool=self.global_pool,
                      fc_norm=isinstance(self.fc_norm, nn.LayerNorm))  # as built, not as the pooling implies

    def new_head(self, zero_init: bool = False) -> nn.Module:
        """A freshly initialised ``num_features`` -> ``num_classes`` linear layer (Identity for 0 classes)."""
        if self.num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, self.num_classes)
        if zero_init:
            nn.init.zeros_(head.weight)
        else:
            nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        if getattr(self, "head_norm", False):
            return nn.Sequential(nn.BatchNorm1d(self.num_features, affine=False, eps=1e-6), head)
        return head

    def set_patch_drop_rate(self, rate: float) -> None:
        """Change patch dropout between epochs: a schedule trains cheap epochs on few tokens first and
        closes on every token, the share evaluation sees (FLIP's unmasked tuning)."""
        if rate != getattr(self.patch_drop, "prob", 0.0):  # a new module makes torch.compile recompile
            self.patch_drop = PatchDropout(rate, self.num_prefix_tokens) if rate else nn.Identity()
        record_change(self, patch_drop_rate=rate)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """Tokens placed before the patches; a variant with more (DeiT's distillation token) extends this."""
        return [self.cls_token.expand(batch, -1, -1)] if self.cls_token is not None else []

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        pos_embed = self.pos_embed
        if (h, w) != self.grid_size:
            pos_embed = resample_abs_pos_embed(pos_embed, (h, w), self.grid_size, self.pos_embed_prefix)
        x = x.reshape(b, h * w, d)
        if self.no_embed_class:
            return self.pos_drop(torch.cat(self.prefix_tokens(b) + [x + pos_embed], dim=1))
        return self.pos_drop(torch.cat(self.prefix_tokens(b) + [x], dim=1) + pos_embed)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> the encoder's input tokens [B, prefix + patches, D]."""
        return self.patch_drop(self._pos_embed(self.patch_embed(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalised tokens [B, prefix + patches, D]."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              output_fmt: PatchFormat = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps from several depths, for dense heads (segmentation, detection), as timm's contract:
        the outputs of the blocks ``indices`` picks (see ``feature_take_indices``), prefix tokens dropped,
        through the final norm if ``norm``, as [B, D, H/P, W/P] (``"NLC"``: [B, H/P·W/P, D]); then
        ``forward_features``' tokens unless ``intermediates_only``. Patch dropout is off: a map needs every patch."""
        take = feature_take_indices(len(self.blocks), indices)
        x = self.patch_embed(x)
        grid = x.shape[1:3]
        x = self._pos_embed(x)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                y = self.norm(x) if norm else x
                maps.append(patch_maps(y[:, self.num_prefix_tokens:], grid, output_fmt))
        return maps if intermediates_only else (self.norm(x), maps)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            return self.attn_pool(x)
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.fc_norm(self.pool(x)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. When the head reads only the [class] (and distillation) token, the last block
        updates only those: the same logits for about 3/4 of one block's work less (what CaiT's
        class attention makes architectural). ``forward_head(forward_features(x))`` computes every
        token, for callers that want them all (explain's attention maps)."""
        if self.global_pool != "token" or len(self.blocks) == 0:
            return self.forward_head(self.forward_features(x))
        x = self.embed(x)
        *first, last = self.blocks
        for block in first:
            x = block(x)
        return self.forward_head(self.norm(last(x, queries=self.num_prefix_tokens)))
