"""``vitkit convert``: weights from any layout vitkit reads, written in another."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import VitkitError
from .hf import save_hf
from .native import save_vitkit
from .read import load_model
from .timm import save_timm


def convert(src: str | Path, dst: str | Path, to: Literal["vitkit", "timm", "hf"] = "vitkit",
            name: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            **overrides: Any) -> Path:
    """``vitkit convert``: load ``src`` in any layout and write ``dst`` as a vitkit folder,
    a timm state dict (a file; ``.pth`` gives a pickle, else safetensors) or an HF folder.
    ``mean``/``std`` record the input normalisation the weights were trained with (a timm file
    keeps none), so that predict, eval, serve and fine-tuning all feed them alike."""
    model = load_model(src, name, **overrides)
    meta = {k: v for k, v in model.checkpoint_meta.items() if k not in ("source", "format")}
    if (mean is None) != (std is None):
        raise VitkitError("give both mean and std, or neither")
    if mean is not None:
        chans = getattr(model, "patch_embed", model).in_chans  # a CNN has no patch embedding
        if len(mean) != chans or len(std) != chans or min(std) <= 0:
            raise VitkitError(f"mean and std need one value per input channel ({chans}), std > 0; "
                              f"got mean {list(mean)}, std {list(std)}")
        meta.update(mean=list(mean), std=list(std))
    if to == "vitkit":
        return save_vitkit(model, dst, **meta)
    if to == "timm":
        return save_timm(model, dst, meta)
    if to == "hf":
        return save_hf(model, dst, meta.get("classes"))
    raise VitkitError(f"unknown target format {to!r} (vitkit, timm or hf)")
