"""``vitkit.create_model``: one entry point for a model by name, with or without weights.

A registered name builds an untrained model (``vitkit.models.create_model``); ``checkpoint``
reads weights from a file or folder in any layout ``vitkit.weights`` knows and builds the
model they describe. The package's layers stay one-way: models know nothing of files.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from .models import create_model as build_registered
from .weights import load_model


def create_model(name: str | None = None, checkpoint: str | os.PathLike | None = None, **overrides: Any) -> nn.Module:
    """A registered model, or with ``checkpoint`` the model its weights describe, loaded.

    With weights, ``name`` only fills in what they cannot tell (the head count of a timm
    file), and ``overrides`` resize it (``img_size`` resamples the position embeddings,
    ``num_classes`` gives a fresh head). Either way the model's ``build_spec`` rebuilds it.
    """
    if checkpoint is not None:
        return load_model(checkpoint, name, **overrides)
    if name is None:
        raise ValueError("create_model needs a model name or a checkpoint")
    return build_registered(name, **overrides)
