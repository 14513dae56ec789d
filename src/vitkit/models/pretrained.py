"""Pretrained weights vitkit knows by name, as data: timm's ``architecture.tag`` convention.

Each entry is what timm's ``default_cfgs`` says of weights it publishes on the Hugging Face Hub
as ``timm/<architecture>.<tag>``: the repo, the head size, the input size and the preprocessing
the weights were evaluated with. Loading reads the repo's own config.json (it wins where the
two differ); this table names what exists, so that ``vitkit models --pretrained`` can list it
and a bare architecture name resolves to its default weights: the first tag listed for it, as
in timm. A model family's module adds its own tags with :func:`register_pretrained`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # Google's ViT weights: pixels scaled to [-1, 1]


@dataclass(frozen=True)
class PretrainedCfg:
    name: str  # "architecture.tag"
    hf_hub_id: str
    num_classes: int = 1000  # 0: the weights have no head (features for fine-tuning)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    description: str = ""

    @property
    def architecture(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_pretrained(name: str, description: str = "", **cfg: Any) -> None:
    """Add ``architecture.tag``; its repo defaults to timm's (``timm/architecture.tag``)."""
    architecture, _, tag = name.partition(".")
    if not architecture or not tag:
        raise ValueError(f"pretrained weights are named architecture.tag, got {name!r}")
    if name in _PRETRAINED:
        raise ValueError(f"pretrained weights {name!r} are already registered")
    _PRETRAINED[name] = PretrainedCfg(name, cfg.pop("hf_hub_id", f"timm/{name}"), description=description, **cfg)


def list_pretrained(pattern: str = "*") -> list[PretrainedCfg]:
    """Known weights whose ``architecture.tag`` matches a shell pattern (``"vit_base*"`` or
    ``"*in21k*"``); architectures sorted, each one's tags in order, its default first."""
    found = [cfg for name, cfg in _PRETRAINED.items() if fnmatch.fnmatchcase(name, pattern.lower())
             or fnmatch.fnmatchcase(cfg.architecture, pattern.lower())]
    return sorted(found, key=lambda cfg: cfg.architecture)  # stable: the tags keep their order


def get_pretrained_cfg(name: str) -> PretrainedCfg | None:
    """The entry of ``architecture.tag``, or of an architecture's default tag; None if not known."""
    if "." in name:
        return _PRETRAINED.get(name)
    return next((cfg for cfg in _PRETRAINED.values() if cfg.architecture == name), None)


# --- ViT (Dosovitskiy et al.) as Google released it, and "How to train your ViT" (AugReg) ----------
# timm's order: an architecture's first tag is its default.
_AUGREG = "AugReg: ImageNet-21k, fine-tuned on ImageNet-1k"
register_pretrained("vit_base_patch16_224.augreg2_in21k_ft_in1k", "AugReg, ImageNet-1k fine-tuning redone by timm")
register_pretrained("vit_base_patch8_224.augreg2_in21k_ft_in1k", "AugReg, ImageNet-1k fine-tuning redone by timm")
for _arch in ("vit_tiny_patch16", "vit_small_patch32", "vit_small_patch16", "vit_base_patch32", "vit_base_patch16",
              "vit_base_patch8", "vit_large_patch16"):
    register_pretrained(f"{_arch}_224.augreg_in21k_ft_in1k", _AUGREG)
    if _arch != "vit_base_patch8":
        register_pretrained(f"{_arch}_384.augreg_in21k_ft_in1k", _AUGREG, input_size=(3, 384, 384), crop_pct=1.0)
register_pretrained("vit_base_patch16_224.orig_in21k_ft_in1k", "the ViT paper's: ImageNet-21k, fine-tuned on 1k")
register_pretrained("vit_base_patch16_384.orig_in21k_ft_in1k", "the ViT paper's: ImageNet-21k, fine-tuned on 1k",
                    input_size=(3, 384, 384), crop_pct=1.0)
register_pretrained("vit_large_patch32_384.orig_in21k_ft_in1k", "the ViT paper's: ImageNet-21k, fine-tuned on 1k",
                    input_size=(3, 384, 384), crop_pct=1.0)
register_pretrained("vit_base_r50_s16_384.orig_in21k_ft_in1k", "the ViT paper's hybrid: ImageNet-21k, fine-tuned on 1k",
                    input_size=(3, 384, 384), crop_pct=1.0)
for _arch in ("vit_small_patch16", "vit_base_patch32", "vit_base_patch16"):
    register_pretrained(f"{_arch}_224.augreg_in1k", "AugReg: ImageNet-1k only")
    register_pretrained(f"{_arch}_384.augreg_in1k", "AugReg: ImageNet-1k only", input_size=(3, 384, 384),
                        crop_pct=1.0)
for _arch in ("vit_base_patch32_224", "vit_base_patch16_224", "vit_large_patch32_224", "vit_large_patch16_224",
              "vit_huge_patch14_224", "vit_base_r50_s16_224"):
    register_pretrained(f"{_arch}.orig_in21k", "the ViT paper's ImageNet-21k pretraining, no head", num_classes=0)
for _arch in ("vit_tiny_patch16", "vit_small_patch32", "vit_small_patch16", "vit_base_patch32", "vit_base_patch16",
              "vit_base_patch8", "vit_large_patch16"):
    register_pretrained(f"{_arch}_224.augreg_in21k", "AugReg: ImageNet-21k (21843 classes)", num_classes=21843)

# --- MAE (He et al.): self-supervised on ImageNet-1k, encoder only ------------------------------------
for _arch in ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224"):
    register_pretrained(f"{_arch}.mae", "MAE pretraining, no head", num_classes=0, mean=IMAGENET_MEAN,
                        std=IMAGENET_STD)

# --- DeiT and DeiT III (Touvron et al.) -------------------------------------------------------------
_DEIT = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
for _size in ("tiny", "small", "base"):
    register_pretrained(f"deit_{_size}_patch16_224.fb_in1k", "DeiT: ImageNet-1k", **_DEIT)
register_pretrained("deit_base_patch16_384.fb_in1k", "DeiT: ImageNet-1k", input_size=(3, 384, 384), crop_pct=1.0,
                    **_DEIT)
for _size in ("tiny", "small", "base"):
    register_pretrained(f"deit_{_size}_distilled_patch16_224.fb_in1k", "DeiT distilled from a RegNet: ImageNet-1k",
                        **_DEIT)
register_pretrained("deit_base_distilled_patch16_384.fb_in1k", "DeiT distilled from a RegNet: ImageNet-1k",
                    input_size=(3, 384, 384), crop_pct=1.0, **_DEIT)
_DEIT3 = [("small", 16, 224), ("small", 16, 384), ("medium", 16, 224), ("base", 16, 224), ("base", 16, 384),
          ("large", 16, 224), ("large", 16, 384), ("huge", 14, 224)]
for _pretraining, _what in (("fb_in1k", "DeiT III: ImageNet-1k"),
                            ("fb_in22k_ft_in1k", "DeiT III: ImageNet-22k, fine-tuned on 1k")):
    for _size, _patch, _res in _DEIT3:
        register_pretrained(f"deit3_{_size}_patch{_patch}_{_res}.{_pretraining}", _what, input_size=(3, _res, _res),
                            crop_pct=1.0 if _res == 384 or _pretraining != "fb_in1k" else 0.9, **_DEIT)
