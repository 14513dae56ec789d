"""Masked autoencoder pretraining (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

The encoder is vitkit's plain ``VisionTransformer`` (this class *is* one, with no head), which sees
only the visible patches plus [class]; a light decoder (``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) fills in the masked
ones and predicts their pixels. Everything follows the paper's ``models_mae.py`` line for line, so
its state dict has the released checkpoints' names and a given noise reproduces its outputs:

- random masking by per-sample noise: argsort, keep the first ``int(L * (1 - mask_ratio))``,
  ``mask`` 1 = removed;
- fixed 2-D sin-cos position embeddings in encoder and decoder (MAE's layout, [class] row zeros);
- patchify with channels last inside a patch (``nchpwq->nhwpqc``);
- the loss is the per-patch mean squared error over the masked patches only, against pixels
  normalised per patch when ``norm_pix_loss``.

The patch embedding must be plain. SL-ViT's shifted patch tokens copy half a patch of each neighbour
into every token, so a visible token would carry pixels of the masked patches beside it and the
encoder would see what it is asked to reconstruct: such encoders are refused.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import Block, PatchEmbed
from .pos_embed import mae_sincos_2d_pos_embed
from .registry import create_model, get_model_spec, register_model
from .vit import VisionTransformer

MaeOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loss, pred [B, L, p*p*C], mask [B, L]


class MaskedAutoencoderViT(VisionTransformer):
    """MAE with a ViT encoder; ``forward(imgs, mask_ratio, noise) -> (loss, pred, mask)``.

    Keyword names are the paper's (``decoder_embed_dim``, ``decoder_depth``, ``decoder_num_heads``,
    ``norm_pix_loss``); other keywords go to the encoder (``VisionTransformer``). ``mask_ratio`` is
    the default a forward call uses. ``encoder(...)`` returns the encoder alone, with a head, for
    fine-tuning or a linear probe.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, num_classes: int = 0,
                 norm_eps: float = 1e-6, weight_init: str = "", **encoder_kwargs: Any):
        embed_layer = encoder_kwargs.pop("embed_layer", PatchEmbed)
        if embed_layer is not PatchEmbed:
            raise ValueError(f"MAE needs a plain patch embedding, not {getattr(embed_layer, '__name__', embed_layer)}:"
                             " a token that mixes in neighbouring pixels (SL-ViT's shifted patches) would show the "
                             "encoder the masked patches it must reconstruct")
        for key, wanted in (("class_token", True), ("no_embed_class", False), ("pos_embed", "sincos")):
            if encoder_kwargs.pop(key, wanted) != wanted:
                raise ValueError(f"MAE's encoder is built with {key}={wanted!r} (the paper's layout)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         norm_eps=norm_eps, pos_embed="sincos", weight_init="skip", **encoder_kwargs)
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", torch.zeros(1, num_patches + 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_embed.patch_size[0] ** 2 * in_chans)
        if weight_init != "skip":
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """The paper's: MAE sin-cos position embeddings, xavier-uniform linears and patch projection
        (as a linear layer), normal(0.02) [class] and mask tokens, zero biases, unit LayerNorms."""
        with torch.no_grad():
            self.pos_embed.copy_(mae_sincos_2d_pos_embed(self.grid_size, self.embed_dim))
            self.decoder_pos_embed.copy_(mae_sincos_2d_pos_embed(self.grid_size, self.decoder_pos_embed.shape[-1]))
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token", "decoder_pos_embed"}

    # --- pixels <-> patches -------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, p*p*C], each patch's pixels as (row, column, channel)."""
        p, (h, w) = self.patch_size, self.grid_size
        x = imgs.reshape(imgs.shape[0], imgs.shape[1], h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * w, p * p * imgs.shape[1])

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: [B, L, p*p*C] -> [B, C, H, W]."""
        p, (h, w), c = self.patch_size, self.grid_size, self.patch_embed.in_chans
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c))
        return x.reshape(x.shape[0], c, h * p, w * p)

    # --- the algorithm ------------------------------------------------------------------------
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample shuffle by ``noise`` (uniform [B, L] if None): the tokens of the lowest noise are kept.
        Returns the kept tokens [B, keep, D], the mask [B, L] (1 = removed) and the unshuffling indices."""
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> (latent [B, 1 + keep, D] after the final norm, mask, ids_restore)."""
        x = self.patch_embed(imgs).flatten(1, 2) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.blocks(torch.cat([cls, x], dim=1))
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent of the visible patches -> predicted pixels of every patch [B, L, p*p*C]."""
        x = self.decoder_embed(latent)
        b, length, d = x.shape[0], ids_restore.shape[1], x.shape[2]
        masked = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # back in image order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: the patches' pixels, normalised per patch with ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches only."""
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> MaeOutput:
        """(loss, pred, mask); ``mask_ratio`` defaults to the model's (0.75), ``noise`` [B, L] to uniform."""
        latent, mask, ids_restore = self.forward_encoder(imgs, self.mask_ratio if mask_ratio is None else mask_ratio,
                                                         noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``pred`` as images in the input's units. A ``norm_pix_loss`` model predicts each patch normalised
        to zero mean and unit variance; the true patch's mean and variance are put back, as the paper's
        visualisation does, so the picture shows the structure the model predicts."""
        if self.norm_pix_loss:
            target = self.patchify(imgs)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return self.unpatchify(pred)

    # --- the encoder alone --------------------------------------------------------------------
    def encoder_kwargs(self) -> dict[str, Any]:
        """``VisionTransformer`` keywords of the encoder, from the build spec (or the modules)."""
        spec = getattr(self, "build_spec", None)
        drop = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss", "mask_ratio")
        if spec is not None:
            return {k: v for k, v in spec.kwargs.items() if k not in drop}
        block = self.blocks[0]
        return dict(img_size=self.patch_embed.img_size, patch_size=self.patch_size,
                    in_chans=self.patch_embed.in_chans, embed_dim=self.embed_dim, depth=len(self.blocks),
                    num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / self.embed_dim,
                    norm_eps=block.norm1.eps)

    def encoder(self, num_classes: int = 0, global_pool: str = "avg", **overrides: Any) -> VisionTransformer:
        """The pretrained encoder as a ``VisionTransformer`` with a fresh head, as the paper fine-tunes it:
        ``global_pool="avg"`` averages the patch tokens through a new ``fc_norm`` (the pretrained final
        norm is dropped); ``"token"`` keeps the [class] token and the final norm (the linear probe).
        The position embeddings become learnable, starting from the fixed sin-cos ones."""
        kwargs = {**self.encoder_kwargs(), "num_classes": num_classes, "global_pool": global_pool,
                  "fc_norm": None, "pos_embed": "learn", **overrides}
        model = create_model("vision_transformer", **kwargs)
        wanted = model.state_dict()
        state = {k: v for k, v in self.state_dict().items() if k in wanted and not k.startswith("head.")}
        missing = model.load_state_dict(state, strict=False).missing_keys
        fresh = [k for k in missing if not k.startswith(("head.", "fc_norm.", "norm."))]
        if fresh:
            raise ValueError(f"the encoder's tensors {fresh[:3]} have no pretrained weights")
        return model


def mae_for_encoder(name: str, **overrides: Any) -> MaskedAutoencoderViT:
    """An MAE whose encoder is the registered plain ViT ``name`` (its size, patch and channels), with the
    decoder ``overrides`` give (default: the paper's 8 x 512, which outweighs a small encoder: pass
    ``decoder_embed_dim`` / ``decoder_depth`` / ``decoder_num_heads`` for small images)."""
    spec = get_model_spec(name)
    builder = spec.builder
    keywords = getattr(builder, "keywords", {})
    if keywords.get("embed_layer", PatchEmbed) is not PatchEmbed or spec.kwargs.get("embed_layer",
                                                                                      PatchEmbed) is not PatchEmbed:
        raise ValueError(f"{name} has shifted patch tokens (SL-ViT), which copy neighbouring pixels into each "
                         "token and so leak masked patches to the encoder; MAE needs a plain patch embedding "
                         "(e.g. vit_mini_patch4_28)")
    if getattr(builder, "func", builder) is not VisionTransformer or keywords:
        raise ValueError(f"{name} is not a plain VisionTransformer; MAE's encoder must be one")
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("num_classes", "global_pool", "fc_norm")}
    return create_model("mae_vision_transformer", **{**kwargs, **overrides})


# --- registered names: the paper's, and small ones for 28x28 grayscale ----------------------
_PAPER_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
register_model("mae_vision_transformer", MaskedAutoencoderViT,
               "an MAE of any size (MaskedAutoencoderViT's keyword arguments): what weights of no registered name "
               "rebuild", **_PAPER_DECODER)
for _size, _patch, _dim, _depth, _heads in (("base", 16, 768, 12, 12), ("large", 16, 1024, 24, 16),
                                            ("huge", 14, 1280, 32, 16)):
    register_model(f"mae_vit_{_size}_patch{_patch}", MaskedAutoencoderViT,
                   f"MAE pretraining of ViT-{_size[0].upper()}/{_patch} (the paper's 8 x 512 decoder)",
                   img_size=224, patch_size=_patch, embed_dim=_dim, depth=_depth, num_heads=_heads, **_PAPER_DECODER)

# The paper's decoder (8 blocks x 512) would be ~25x the mini encoder. These keep its proportions
# instead: a decoder block ~1/4 the width, so a decoder token costs <10% of an encoder token.
register_model("mae_vit_mini_patch4_28", MaskedAutoencoderViT,
               "MAE for 28x28 grayscale: vit_mini_patch4_28's encoder (6 x 128) and a light 2 x 64 decoder",
               img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
               decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
register_model("mae_vit_tiny_patch4_28", MaskedAutoencoderViT,
               "MAE for 28x28 grayscale: vit_tiny_patch4_28's encoder (12 x 192) and a 4 x 96 decoder",
               img_size=28, patch_size=4, in_chans=1, embed_dim=192, depth=12, num_heads=3,
               decoder_embed_dim=96, decoder_depth=4, decoder_num_heads=3)
