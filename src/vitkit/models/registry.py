"""Named model configurations, with timm's names so users' habits carry over.

A name maps to a builder (the model class, or a variant's) and the keyword arguments
that define it. ``create_model(name, **overrides)`` merges the overrides on top, so
``create_model("vit_base_patch16_224", num_classes=10, img_size=384)`` works as in timm.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import VitkitError
from .pretrained import get_pretrained_cfg
from .spec import BuildSpec
from .vit import VisionTransformer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def input_size(self) -> tuple[int, int, int]:
        img = self.kwargs.get("img_size", 224)
        return (self.kwargs.get("in_chans", 3), img, img)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, builder: Callable[..., nn.Module], description: str = "", **kwargs: Any) -> None:
    if name in _REGISTRY:
        raise KeyError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, builder, kwargs, description)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, e.g. ``list_models("vit_base*")``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern.lower()))  # names are lower case


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.split("_")[0] in n][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise VitkitError(f"unknown model {name!r} (see `vitkit models`){hint}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace the named configuration's keyword arguments.

    The model carries its :class:`BuildSpec` (``model.build_spec``: the name and the full merged
    keyword arguments), which is all a checkpoint needs to rebuild it. Weights from a file or
    the Hub come through ``vitkit.create_model``, which builds on this.
    """
    name, overrides = _untagged(name, overrides)
    spec = get_model_spec(name)
    kwargs = {**spec.kwargs, **overrides}
    try:
        model = spec.builder(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise  # a bug, not a bad argument
        raise VitkitError(f"model {name!r} takes no {str(e).split('argument ')[-1]} argument") from e
    except ValueError as e:  # constructors check their arguments with ValueError
        raise VitkitError(f"bad arguments for model {name!r}: {e}") from e
    model.build_spec = BuildSpec(name, kwargs)
    return model


def _untagged(name: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """timm's ``architecture.tag`` names weights; without ``pretrained=True`` the architecture is built,
    untrained, with the head those weights have (as timm does)."""
    if name.startswith("hf-hub:"):
        raise VitkitError(f"{name} names weights on the Hugging Face Hub: pass pretrained=True")
    known = get_pretrained_cfg(name) if "." in name else None
    return name.partition(".")[0], {"num_classes": known.num_classes, **overrides} if known else overrides


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_param_count(name: str, **overrides: Any) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        return count_params(create_model(name, weight_init="skip", **overrides))


def model_flops(name: str, **overrides: Any) -> int:
    """Floating-point operations of one image's eval-mode forward pass (a multiply-add counts 2), by
    ``torch.utils.flop_counter`` on the meta device: no weights, no time spent computing. It counts
    what vitkit runs (a ViT's last block on its [class] token only), the survey's point being that
    FLOPs alone predict latency badly: the benchmarks time the models too."""
    from torch.utils.flop_counter import FlopCounterMode

    from .spec import input_geometry
    with torch.device("meta"):
        model = create_model(name, weight_init="skip", **overrides).eval().requires_grad_(False)
        chans, size = input_geometry(model)  # (no grad: the counter's module hooks fail on a parameter passed
                                             # straight into a submodule, as PiT's and CaiT's [class] tokens are)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, chans, size, size))
    return counter.get_total_flops()


# --- the paper's sizes (Table 1), plus Ti and S from DeiT ------------------------------
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_TIMM_VITS = [  # (size, patch, resolution) as registered in timm
    ("tiny", 16, 224), ("tiny", 16, 384),
    ("small", 32, 224), ("small", 32, 384), ("small", 16, 224), ("small", 16, 384), ("small", 8, 224),
    ("base", 32, 224), ("base", 32, 384), ("base", 16, 224), ("base", 16, 384), ("base", 8, 224),
    ("large", 32, 224), ("large", 32, 384), ("large", 16, 224), ("large", 16, 384), ("large", 14, 224),
    ("huge", 14, 224),
]
register_model("vision_transformer", VisionTransformer,
               "a ViT of any size (VisionTransformer's keyword arguments): what weights of no registered name rebuild")
for _size, _patch, _res in _TIMM_VITS:
    _extra = {"num_classes": 0} if _size == "huge" else {}  # timm ships ViT-H/14 without a head
    register_model(f"vit_{_size}_patch{_patch}_{_res}", VisionTransformer,
                   f"ViT-{_size[0].upper()}/{_patch} at {_res}px",
                   img_size=_res, patch_size=_patch, **VIT_SIZES[_size], **_extra)

# --- small images (28x28 grayscale: Fashion-MNIST, MNIST) -------------------------------
SMALL_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    # 'mini': vitkit's CPU-sized ViT, the default for Fashion-MNIST (trains to >90% in minutes).
    "mini": dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
}
for _size, _cfg in SMALL_SIZES.items():
    for _patch in (4, 7):
        register_model(f"vit_{_size}_patch{_patch}_28", VisionTransformer,
                       f"ViT {_size} for 28x28 grayscale, patch {_patch}",
                       img_size=28, patch_size=_patch, in_chans=1, num_classes=10, **_cfg)
