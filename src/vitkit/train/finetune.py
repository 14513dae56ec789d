"""Fine-tuning as the ViT paper does it (Sec. 3.2): pretrained body, new zero-initialised head.

The whole pretraining head (the tanh pre-logits layer too) is replaced by one D×K linear
layer whose weights start at zero, so the first steps do not push noise back into the
body. At a new resolution the patch size stays and the position embeddings are
resampled to the new grid by 2-D bicubic interpolation (exactly as timm does, done by
``vitkit.weights`` when ``img_size`` differs from the checkpoint's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitkitError
from ..models import MaskedAutoencoderViT
from ..models.spec import record_change
from ..weights import load_model
from ..weights.build import HEADS, load_strict


def load_pretrained(source: str | Path, img_size: int | None = None, patch_size: int | None = None,
                    linear_probe: bool = False, **overrides: Any) -> nn.Module:
    """Pretrained weights from ``source`` (any layout vitkit reads), resampled to ``img_size``
    / ``patch_size`` when given; the head is still the pretraining one (see :func:`replace_head`).
    A masked autoencoder gives its encoder (:func:`mae_encoder`)."""
    geometry = {k: v for k, v in dict(img_size=img_size, patch_size=patch_size).items() if v is not None}
    model = load_model(source, **geometry, **overrides)
    return mae_encoder(model, linear_probe) if isinstance(model, MaskedAutoencoderViT) else model


def mae_encoder(model: MaskedAutoencoderViT, linear_probe: bool = False) -> nn.Module:
    """The encoder of an MAE as the paper evaluates it: fine-tuned on the average of its patch tokens
    through a new ``fc_norm``; probed linearly on its normed [class] token through a BatchNorm without
    affine parameters. The decoder is dropped; the checkpoint meta (normalisation) is kept."""
    encoder = (model.encoder(global_pool="token", head_norm=True) if linear_probe
               else model.encoder(global_pool="avg"))
    encoder.checkpoint_meta = getattr(model, "checkpoint_meta", {})
    return encoder


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Drop the pretraining head (pre-logits included) for a zero-initialised D×K linear layer."""
    if not isinstance(getattr(model, "pre_logits", nn.Identity()), nn.Identity):
        model.pre_logits = nn.Identity()
        model.num_features = model.embed_dim
        record_change(model, representation_size=None)
    model.reset_classifier(num_classes, zero_init=True)  # which records the new head in the build spec
    return model


def freeze_body(model: nn.Module) -> None:
    """Linear probe: only the head learns; the body is a fixed feature extractor."""
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(HEADS)


def body_to_eval(model: nn.Module) -> None:
    """After ``model.train()``: a probed body stays fixed, BatchNorm statistics included (a CNN's
    would drift to the new data), and gives the head its features without dropout."""
    for name, module in model.named_modules():
        if name and not (name + ".").startswith(HEADS):
            module.eval()


def init_backbone(model: nn.Module, source: str | Path) -> None:
    """Start a hybrid's CNN backbone from a trained CNN (a vitkit checkpoint of the same stages,
    e.g. ``resnet_mini_28`` under ``vit_hybrid_resnet_mini_28``); its classifier is left out.

    The encoder on top starts from scratch, so the early steps train it on features that
    already separate the classes, instead of on a random stem.
    """
    backbone = getattr(getattr(model, "patch_embed", None), "backbone", None)
    if backbone is None:
        raise VitkitError(f"backbone_from: {type(model).__name__} has no CNN backbone (use a hybrid, "
                          "e.g. vit_hybrid_resnet_mini_28)")
    wanted = backbone.state_dict()
    cnn = load_model(source).state_dict()
    load_strict(backbone, {k: v for k, v in cnn.items() if k in wanted}, str(source))
