"""Turn a :class:`Checkpoint` into a model: settle the architecture, fit the tensors, load strictly.

Precedence, lowest first: the registry name's configuration (fills what weights cannot
tell, such as the head count), what the tensors show, what the file states
(``Checkpoint.kwargs``), then the caller's overrides. Overrides that change the
geometry resample the embeddings; a different ``num_classes`` drops the stored head
and keeps the fresh one (fine-tuning on new classes), as timm does.

A model that is not a ViT (a ResNet teacher, CaiT, ConViT, CrossViT, Swin, PVT v2, PiT) has no
architecture to infer: its vitkit checkpoint states the registry name and keyword arguments, which
rebuild it exactly, and a timm file of one loads under its registered name (``adapt_state_dict``,
where the model has one, fits tensors made at another size, as timm's ``checkpoint_filter_fn`` does).
"""
from __future__ import annotations

import warnings

from typing import Any

import torch
from torch import nn

from ..errors import VitkitError
from ..models import (DistilledVisionTransformer, VisionTransformer, create_model, get_model_spec,
                      resample_abs_pos_embed)
from ..models.layers import to_2tuple
from .checkpoint import Checkpoint
from .files import StateDict
from .infer import default_num_heads, infer_kwargs
from .resample import resample_patch_embed
from .timm import is_timm

# Classifier tensors, dropped when num_classes changes: a ViT's head, DeiT's distillation head, a ResNet's fc.
HEADS = ("head.", "head_dist.", "fc.")


def build_model(ckpt: Checkpoint, name: str | None = None, **overrides: Any) -> nn.Module:
    """The loaded model; ``model.checkpoint_meta`` keeps the file's class names, mean/std and origin."""
    name = name or ckpt.model_name
    try:
        base = dict(get_model_spec(name).kwargs) if name else {}
    except ValueError as e:
        raise VitkitError(f"{ckpt.source}: {e}") from e
    build = _build_vit if not name or (is_timm(ckpt.state_dict) and _builds_vit(name)) else _build_registered
    model = build(ckpt, name, base, overrides)
    model.checkpoint_meta = {"source": ckpt.source, "format": ckpt.format, **_meta_after(ckpt.meta, model, overrides)}
    return model


def _meta_after(meta: dict[str, Any], model: nn.Module, overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's metadata as it holds for the model built: an override of the input size or channels
    is the model's now, and class names of a replaced head name nothing."""
    meta = {**meta, **{k: overrides[k] for k in ("img_size", "in_chans") if k in meta and k in overrides}}
    if "num_classes" in overrides and len(meta.get("classes", ())) != overrides["num_classes"]:
        meta.pop("classes", None)  # a new head: the old names name nothing (a config that disagrees with
                                   # its own head is left for load_checkpoint to refuse, by file name)
    return meta


def _build_registered(ckpt: Checkpoint, name: str, base: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """A registered model that is not a ViT: the name and the file's keyword arguments say it all."""
    model = _construct(name, {**base, **ckpt.kwargs, **overrides}, ckpt.source)
    stored = next((ckpt.state_dict[k].shape[0]  # Swin: head.fc, CrossViT: head.0 (one per branch), LeViT: head.linear
                   for k in ("head.weight", "head.fc.weight", "head.0.weight", "head.linear.weight", "fc.weight")
                   if k in ckpt.state_dict), 0)
    wanted = getattr(model, "num_classes", stored)
    sd = _without_head(ckpt.state_dict, stored, wanted)
    if hasattr(model, "adapt_state_dict"):  # timm's checkpoint_filter_fn: e.g. tables for another window size
        sd = model.adapt_state_dict(sd)
    load_strict(model, sd, ckpt.source, optional=HEADS if wanted != stored else ())
    return model


def _without_head(sd: StateDict, stored_classes: int, num_classes: int) -> StateDict:
    """The tensors, less the classifier when the number of classes changes (it is then freshly initialised)."""
    if num_classes == stored_classes:
        return dict(sd)
    return {k: v for k, v in sd.items() if not k.startswith(HEADS)}


# What a model name fixes that the weights show as well (the tensors win; a difference is warned of).
_SHAPING = ("embed_dim", "depth", "mlp_ratio", "patch_size", "in_chans", "class_token")


def _build_vit(ckpt: Checkpoint, name: str | None, base: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    # a file that states its build spec (vitkit's) is rebuilt from it alone; others are read off the tensors
    found = dict(ckpt.kwargs) if ckpt.spec_complete else {
        **infer_kwargs(ckpt.state_dict, ckpt.source, _stated_layout(ckpt, overrides)), **ckpt.kwargs}
    if name and name != ckpt.model_name:  # the caller's name (a file's own may carry its own kwargs)
        _check_name_fits(ckpt.source, name, base, found, overrides)
    native = {**base, **found}
    kwargs = {**native, **overrides}
    if "patch_size" not in kwargs:  # SL-ViT's linear projection over shifted patches does not show it
        raise VitkitError(f"{ckpt.source}: the weights do not say their patch size (a linear patch embedding, "
                          "as SL-ViT's; a .pth file keeps no architecture); pass a model name, e.g. "
                          "--model sl_vit_mini_patch4_28")
    if "num_heads" not in kwargs:
        kwargs["num_heads"], reason = default_num_heads(kwargs["embed_dim"], ckpt.source)
        warnings.warn(f"{ckpt.source}: the weights do not store the number of attention heads; assuming "
                      f"{kwargs['num_heads']} ({reason}). If that is wrong the logits are too: pass a model "
                      "name or num_heads (vitkit finetune: --set 'model_kwargs={num_heads: N}')", stacklevel=2)
    model = _construct(name, kwargs, ckpt.source, distilled="dist_token" in ckpt.state_dict)
    sd = fit_state_dict(ckpt, native, kwargs, model, _native_grid(name, native, kwargs))
    load_strict(model, sd, ckpt.source, optional=HEADS if "head.weight" not in sd else ())
    return model


def _stated_layout(ckpt: Checkpoint, overrides: dict[str, Any]) -> bool | None:
    """``no_embed_class`` as the caller or the file states it; a file that states its model's keywords
    (vitkit's, Hugging Face's) and leaves it out has ViT's layout. None: read it off the tensors."""
    if "no_embed_class" in overrides:
        return overrides["no_embed_class"]
    return ckpt.kwargs.get("no_embed_class", False) if ckpt.kwargs else None


def _check_name_fits(source: str, name: str, base: dict[str, Any], found: dict[str, Any],
                     overrides: dict[str, Any]) -> None:
    """The tensors decide the sizes and the name the rest (its layers, what the file does not say), so a
    name may stand for a family (an SL-ViT of another depth); where the two differ, the caller is told."""
    def differ(a: Any, b: Any) -> bool:
        return abs(a - b) > 1e-6 if isinstance(a, float) or isinstance(b, float) else to_2tuple(a) != to_2tuple(b)
    clash = [f"{k} {base[k]} vs {found[k]}" for k in _SHAPING
             if k in base and k in found and k not in overrides and differ(base[k], found[k])]
    if clash:
        warnings.warn(f"{source}: the weights are not {name}'s size ({'; '.join(clash)}: the name's vs the "
                      "weights'); building the weights' model with the name's layers", stacklevel=4)


def _construct(name: str | None, kwargs: dict[str, Any], source: str, distilled: bool = False) -> nn.Module:
    """The named model, or without a name the class the tensors call for (a ``dist_token``: DeiT's distilled ViT)."""
    distilled = distilled or "dist_head" in kwargs
    if name and distilled and not _builds_distilled(name):
        raise VitkitError(f"{source}: the weights are a distilled DeiT (dist_token) but {name} is not; "
                          "use a deit_*_distilled_* name or none")
    name = name or ("vision_transformer_distilled" if distilled else "vision_transformer")
    try:
        return create_model(name, **kwargs)
    except VitkitError as e:
        raise VitkitError(f"{source}: cannot build the model ({e})") from e


def _builds_vit(name: str) -> bool:
    """Whether a registered name builds a VisionTransformer (a class, a partial of one, or a function such as
    the hybrid's, which returns one), whose architecture the tensors can tell."""
    builder = get_model_spec(name).builder
    builder = getattr(builder, "func", builder)
    return not isinstance(builder, type) or issubclass(builder, VisionTransformer)


def _builds_distilled(name: str) -> bool:
    builder = get_model_spec(name).builder
    builder = getattr(builder, "func", builder)  # a functools.partial of a class (SL-ViT's)
    return isinstance(builder, type) and issubclass(builder, DistilledVisionTransformer)


def _native_grid(name: str | None, native: dict[str, Any], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The patch grid the checkpoint was trained at, read off its embedding layer (a hybrid's CNN
    stem strides too, so img_size // patch_size is not enough); None when the file does not say."""
    if "img_size" not in native:
        return None
    with torch.device("meta"):
        model = _construct(name, {**native, "num_heads": kwargs["num_heads"], "weight_init": "skip"}, "")
    return model.patch_embed.grid_size


def fit_state_dict(ckpt: Checkpoint, native: dict[str, Any], kwargs: dict[str, Any], model: VisionTransformer,
                   old_grid: tuple[int, int] | None) -> StateDict:
    """The checkpoint's tensors, resampled to the model's patch size and grid, head dropped if resized."""
    sd = _without_head(ckpt.state_dict, native.get("num_classes", 0), kwargs.get("num_classes", 0))
    patch = to_2tuple(kwargs["patch_size"])
    if patch != to_2tuple(native["patch_size"]):
        if sd["patch_embed.proj.weight"].ndim != 4:
            raise VitkitError(f"{ckpt.source}: this model's patch embedding is not a conv; it cannot be resampled "
                              f"from patch size {native['patch_size']} to {kwargs['patch_size']}")
        sd["patch_embed.proj.weight"] = resample_patch_embed(sd["patch_embed.proj.weight"], patch)
    prefix, new_grid = model.pos_embed_prefix, model.patch_embed.grid_size  # the model built has the file's layout
    old_grid = _checked_grid(sd, old_grid, prefix, ckpt.source)
    if old_grid is None:  # not square and the file does not say: the requested size must match
        old_grid = new_grid
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_grid, old_grid, prefix)
    return sd


def _checked_grid(sd: StateDict, grid: tuple[int, int] | None, prefix: int, source: str) -> tuple[int, int] | None:
    if grid is None:
        return None
    if grid[0] * grid[1] + prefix != sd["pos_embed"].shape[1]:
        raise VitkitError(f"{source}: tensor pos_embed has shape {tuple(sd['pos_embed'].shape)}, which does not "
                          f"fit a {grid[0]}x{grid[1]} patch grid + {prefix} prefix token(s); pass img_size")
    return grid


def load_strict(model: nn.Module, sd: StateDict, source: str, optional: tuple[str, ...] = ()) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file, the tensor and both shapes."""
    expected = model.state_dict()
    for key, want in expected.items():
        if key in sd and sd[key].shape != want.shape:
            raise VitkitError(f"{source}: tensor {key} has shape {tuple(sd[key].shape)} in the file but "
                              f"{tuple(want.shape)} in the model")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise VitkitError(f"{source}: tensor {unexpected[0]} {tuple(sd[unexpected[0]].shape)} has no place in "
                          "the model (an unsupported ViT variant?)")
    missing = [k for k in expected if k not in sd and not k.startswith(optional)]
    if missing:
        raise VitkitError(f"{source}: missing tensor {missing[0]} {tuple(expected[missing[0]].shape)}"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    model.load_state_dict(sd, strict=False)
