"""What every reader hands to the model builder, whatever the file's layout."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..models.spec import with_tuples
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
    spec_complete: bool = False  # model_name + kwargs are a build spec (vitkit wrote it): nothing to infer


# A safetensors header may carry strings; vitkit puts there what rebuilds the model, so a plain
# weights file (timm layout) written by vitkit loads without --model, as its checkpoint folder does.
_NAME, _KWARGS = "vitkit.model", "vitkit.model_kwargs"
# what running the model needs, kept as "vitkit.<key>" (JSON): class names, normalisation, eval crop
_RUN_META = ("classes", "mean", "std", "crop_pct", "interpolation", "crop_mode")


def architecture_metadata(model: Any) -> dict[str, str]:
    """The model's build spec as header strings; {} for a module built by calling its class."""
    spec = getattr(model, "build_spec", None)
    if spec is None:
        return {}
    data = spec.to_json()
    return {_NAME: data["model"], _KWARGS: json.dumps(data["model_kwargs"])}


def run_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """Class names and normalisation as header strings, so a weights file alone runs as its checkpoint did."""
    return {f"vitkit.{k}": json.dumps(meta[k]) for k in _RUN_META if meta.get(k) is not None}


def run_meta_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """``run_metadata`` read back; what a header lacks (a file timm wrote) is left out."""
    return {k: json.loads(metadata[f"vitkit.{k}"]) for k in _RUN_META if f"vitkit.{k}" in metadata}


def architecture_from_metadata(metadata: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(registry name, keyword arguments) from ``architecture_metadata``'s strings; (None, {}) without."""
    if _KWARGS not in metadata:
        return None, {}
    return metadata.get(_NAME) or None, with_tuples(json.loads(metadata[_KWARGS]))


def distinct_names(names: list[str]) -> list[str]:
    """Class names as a head's outputs need them, one per output: a name that several outputs share
    gets each one's index ("crane (134)", "crane (517)": ImageNet's bird and machine)."""
    counts = Counter(names)
    return [f"{name} ({i})" if counts[name] > 1 else name for i, name in enumerate(names)]

