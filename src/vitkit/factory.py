"""``vitkit.create_model``: one entry point for a model by name, with or without weights.

A registered name builds an untrained model (``vitkit.models.create_model``); ``pretrained``
fetches its published weights (the Hub is a source of files, like a local path) and
``checkpoint`` reads weights from a file or folder in any layout ``vitkit.weights`` knows. The package's layers stay one-way: models know nothing of files.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from .models import create_model as build_registered
from .weights import load_model
from .weights.hub import load_pretrained


def create_model(name: str | None = None, pretrained: bool = False, checkpoint: str | os.PathLike | None = None,
                 **overrides: Any) -> nn.Module:
    """A registered model; with ``pretrained=True`` its published weights, from the Hugging Face Hub
    as in timm; with ``checkpoint`` the model that weights in a file or folder describe.

    ``name`` may carry timm's weight tag (``"vit_base_patch16_224.augreg2_in21k_ft_in1k"``; a bare
    name takes its default tag, see ``vitkit models --pretrained``) or name any Hub repo
    (``"hf-hub:ORG/NAME"``); ``revision=`` pins it and ``cache_dir=`` moves the cache (see
    :func:`vitkit.weights.hub.load_pretrained`). With weights, ``name`` only fills in what they
    cannot tell (the head count of a timm file), and ``overrides`` resize the model (``img_size``
    resamples the position embeddings, ``num_classes`` gives a fresh head). Either way the model's
    ``build_spec`` rebuilds it.
    """
    if pretrained and checkpoint is not None:
        raise ValueError("give create_model a checkpoint or pretrained=True, not both")
    if pretrained:
        return load_pretrained(name, **overrides)
    if checkpoint is not None:
        return load_model(checkpoint, name, **overrides)
    if name is None:
        raise ValueError("create_model needs a model name or a checkpoint")
    return build_registered(name, **overrides)
