"""What every reader hands to the model builder, whatever the file's layout."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .files import StateDict


@dataclass
class Checkpoint:
    """Weights renamed to timm's layout, plus what the file says beyond its tensor shapes.

    ``kwargs`` holds architecture facts only a config or a tensor layout reveals (an HF
    config's head count and LayerNorm eps, an .npz attention kernel's head count, a
    vitkit checkpoint's full ``model_kwargs``); ``meta`` holds the rest a user needs to
    run the model (``classes``, ``mean``, ``std``).
    """
    state_dict: StateDict
    source: str
    format: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
