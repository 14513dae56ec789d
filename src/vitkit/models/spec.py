"""A model's build spec: the registered name and the keyword arguments that rebuild it.

``create_model`` attaches one to every model it builds (``model.build_spec``). Whatever
changes the architecture afterwards (a new head, another pooling, patch dropout switched
off) goes through :func:`record_change`, so the spec a checkpoint stores always rebuilds
the module it was saved from. Nothing else describes a model's architecture.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import VitkitError


@dataclass(frozen=True)
class BuildSpec:
    """``create_model(name, **kwargs)`` rebuilds the model (untrained); ``kwargs`` are complete, not overrides."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> BuildSpec:
        return BuildSpec(self.name, {**self.kwargs, **changes})

    def to_json(self) -> dict[str, Any]:
        """``{"model": name, "model_kwargs": {...}}``, as config.json and safetensors headers hold it."""
        return {"model": self.name, "model_kwargs": json.loads(json.dumps(self.kwargs))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildSpec:
        return cls(data["model"], with_tuples(dict(data.get("model_kwargs") or {})))


def with_tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments read back from JSON, which turns tuples (sizes, a backbone's stages) into lists."""
    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(fix(x) for x in v)
        return {k: fix(x) for k, x in v.items()} if isinstance(v, dict) else v
    return fix(kwargs)


def spec_of(model: nn.Module) -> BuildSpec:
    """The model's build spec; a module built by calling its class directly has none."""
    spec = getattr(model, "build_spec", None)
    if spec is None:
        raise VitkitError(f"this {type(model).__name__} was built by calling its class, so nothing records how to "
                          "rebuild it: build it with vitkit.create_model(name, ...)")
    return spec


def record_change(model: nn.Module, **changes: Any) -> None:
    """Keep the spec in step with a change a method made to the architecture (a no-op for a module
    built by hand, which has no spec to keep)."""
    spec = getattr(model, "build_spec", None)
    if spec is not None:
        model.build_spec = spec.replace(**changes)
    if getattr(model, "model_kwargs", None) is not None:  # the old name, until every reader uses build_spec
        model.model_kwargs = {**model.model_kwargs, **changes}
