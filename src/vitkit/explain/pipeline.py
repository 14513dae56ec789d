"""The two entry points the CLI calls: explain a few images, and measure attention distance over a dataset.

:func:`explain_images` needs a single forward pass per chunk of images: the attention
hook feeds rollout and the per-layer [class]-token rows at once, and the same pass
gives the logits for the top-5 table. Everything lands in ``out_dir`` as PNGs plus one
self-contained ``report.html``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import VitkitError
from .attention import ClassAttention, HeadFusion, rollout_rows
from .distance import fold_attention_distance
from .embeddings import filter_components, image_filters, pos_embed_similarity
from .figures import (plot_attention_distance, plot_class_attention, plot_filter_components,
                      plot_pos_embed_similarity, plot_rollout)
from .reconstruction import save_reconstructions
from .report import Figure, Section, write_report
from .tokens import input_grid, num_prefix_tokens, resolve_token


def _file_stems(names: Sequence[str]) -> list[str]:
    """File-system-safe, unique stems for the images' names ("a/b c.png" -> "b_c")."""
    stems: list[str] = []
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem).strip("._") or "image"
        base, k = stem, 2
        while stem in stems:
            stem, k = f"{base}_{k}", k + 1
        stems.append(stem)
    return stems


def _display_from_input(x: torch.Tensor) -> np.ndarray:
    """Fallback picture when no original is given: the model input, min-max stretched."""
    img = x[:3] if x.shape[0] == 3 else x.mean(0, keepdim=True)
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img.permute(1, 2, 0).cpu().numpy()


def _class_names(class_names: Sequence[str] | None, num_logits: int) -> list[str]:
    if not class_names:
        return [f"class {i}" for i in range(num_logits)]
    if len(class_names) != num_logits:
        raise VitkitError(f"{len(class_names)} class names were given but the model predicts {num_logits} classes")
    return list(class_names)


def _analyse(model: nn.Module, images: torch.Tensor, token: int | None, head_fusion: HeadFusion,
             batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [B, K], rollout rows [B, patches] (as ``attention_rollout`` and ``vitkit serve`` draw
    them) and the chosen query's attention [B, layers, heads, patches], from one pass per chunk."""
    prefix, row_token = num_prefix_tokens(model), resolve_token(model, token)
    logits, rollouts, cls_rows = [], [], []
    for chunk in images.split(batch_size):
        cls = ClassAttention(prefix, row_token)
        out, row = rollout_rows(model, chunk, head_fusion, token, also=lambda _i, attn: cls.update(attn))
        logits.append(out.float())
        rollouts.append(row)
        cls_rows.append(cls.stacked().transpose(0, 1))
    return torch.cat(logits).cpu(), torch.cat(rollouts).cpu(), torch.cat(cls_rows).cpu()


def model_figures(model: nn.Module, out_dir: Path, n_components: int = 28) -> dict[str, Path]:
    """The weight-only figures: patch-embedding filter components (not for a hybrid, whose
    embedding reads CNN features, not pixels) and position-embedding similarity."""
    figures = {}
    if image_filters(model) is not None:
        comps, ratios = (t.cpu() for t in filter_components(model, n_components))
        figures["filters"] = plot_filter_components(comps, ratios, Path(out_dir) / "patch_embedding_filters.png")
    figures["pos_embed"] = plot_pos_embed_similarity(pos_embed_similarity(model).cpu(),
                                                     Path(out_dir) / "position_embedding_similarity.png")
    return figures


def explain_images(model: nn.Module, images: torch.Tensor, originals: Sequence[Any] | None, names: Sequence[str],
                   class_names: Sequence[str] | None, out_dir: Path, *, token: int | None = None,
                   head_fusion: HeadFusion = "mean", top_k: int = 5, batch_size: int = 16) -> dict[str, Any]:
    """Explain each image's prediction and the model's embeddings; write PNGs and ``report.html``.

    ``images`` are model inputs [B, C, H, W], already normalised; ``originals`` (uint8
    HWC arrays or PIL images, or ``None`` to show the inputs) are what the heat maps are
    drawn over. Returns ``{"report", "figures": {...}, "images": [{"name", "top",
    "attention", "rollout"}, ...]}`` with paths and (class name, probability) pairs.
    """
    gh, gw = input_grid(model, images)
    b = images.shape[0]
    if len(names) != b or (originals is not None and len(originals) != b):
        raise VitkitError(f"got {b} images but {len(names)} names and "
                          f"{'no' if originals is None else len(originals)} originals")
    row_token = resolve_token(model, token)
    out_dir = Path(out_dir)
    logits, rollouts, cls_rows = _analyse(model, images, token, head_fusion, batch_size)
    has_head = getattr(model, "num_classes", logits.shape[-1]) > 0  # without a head the "logits" are features
    labels = _class_names(class_names, logits.shape[-1]) if has_head else []
    probs, idx = logits.softmax(-1).topk(min(top_k, logits.shape[-1]) if has_head else 0, dim=-1)

    what = "[class] token" if row_token == 0 else (f"prefix token {row_token}" if row_token else "mean of patch tokens")
    results, sections = [], []
    for i, stem in enumerate(_file_stems(names)):
        picture = originals[i] if originals is not None else _display_from_input(images[i])
        top = [(labels[int(k)], float(p)) for p, k in zip(probs[i], idx[i])]
        att = plot_class_attention(cls_rows[i].reshape(*cls_rows.shape[1:3], gh, gw), picture,
                                   out_dir / f"{stem}_attention.png", f"{names[i]}: {what} attention per layer and head")
        verdict = f"predicted {top[0][0]} ({100 * top[0][1]:.1f}%)" if top else "model has no classifier head"
        roll = plot_rollout(rollouts[i].reshape(gh, gw), picture, out_dir / f"{stem}_rollout.png",
                            f"{names[i]}: {verdict}")
        results.append({"name": names[i], "top": top, "attention": att, "rollout": roll})
        sections.append(Section(str(names[i]), [
            Figure(roll, f"Attention rollout ({head_fusion} over heads) of the {what}: what each patch "
                         "contributes through all layers."),
            Figure(att, f"Attention of the {what} to each patch, per layer (rows) and head (columns).")], top))

    figures, section = _model_section(model, out_dir)
    report = write_report(out_dir / "report.html", f"vitkit explain: {_model_name(model)}", sections + [section],
                          f"{b} image(s), input {images.shape[-2]}x{images.shape[-1]}, {gh}x{gw} patches.")
    return {"report": report, "figures": figures, "images": results}


def explain_reconstructions(model: nn.Module, images: torch.Tensor, names: Sequence[str], mean: Sequence[float],
                            std: Sequence[float], out_dir: Path, mask_ratio: float = 0.75,
                            seed: int = 0) -> dict[str, Any]:
    """An MAE's report: what it redraws of each image from a quarter of its patches (the paper's
    Fig. 2), then the model figures. ``images`` are uint8 [B, C, H, W]; returns ``{"report",
    "reconstructions", "figures"}``."""
    out_dir = Path(out_dir)
    drawn = save_reconstructions(model, images, tuple(mean), tuple(std), out_dir / "reconstructions.png",
                                 mask_ratio, seed)
    pct = round(100 * mask_ratio)
    caption = (f"Per image (rows, in the order {', '.join(names)}): the original, the input with {pct}% of its "
               "patches removed (grey), the reconstruction, and the reconstruction with the visible patches pasted "
               "back (MAE paper, Fig. 2). The encoder saw only the visible patches.")
    figures, section = _model_section(model, out_dir)
    report = write_report(out_dir / "report.html", f"vitkit explain: {_model_name(model)}",
                          [Section("Reconstructions", [Figure(drawn, caption)]), section],
                          f"{len(images)} image(s), {pct}% of patches masked with seeded noise (seed {seed}).")
    return {"report": report, "reconstructions": drawn, "figures": figures}


def _model_name(model: nn.Module) -> str:
    return spec.name if (spec := getattr(model, "build_spec", None)) else type(model).__name__


def _model_section(model: nn.Module, out_dir: Path) -> tuple[dict[str, Path], Section]:
    figures = model_figures(model, out_dir)
    captions = {"filters": "Top principal components of the patch-embedding filters (ViT paper, Fig. 7 left).",
                "pos_embed": "Cosine similarity of each position's embedding to all others (ViT paper, Fig. 7 centre)."}
    return figures, Section("Model", [Figure(path, captions[key]) for key, path in figures.items()])


def attention_distance_figure(model: nn.Module, batches: Iterable[torch.Tensor], out_path: Path) -> np.ndarray:
    """Mean attention distance per layer and head over ``batches`` (see :mod:`.distance`), plotted to ``out_path``."""
    acc = fold_attention_distance(model, batches)
    dist = acc.mean()
    plot_attention_distance(dist, Path(out_path), uniform=acc.uniform())
    return dist
