"""PNG figures for the explain analyses (matplotlib, Agg backend: no display needed).

Grids of many small maps (layers × heads, positions × positions) are drawn as one
mosaic image with tick labels rather than one axes per map: a ViT-B has 144 heads and
196 positions, and one ``imshow`` keeps those figures fast and light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from ..fileio import save_figure  # noqa: E402

HEAT = "inferno"
ALPHA = 0.5  # heat-map opacity over the image
TILE = 112  # longest side of one map in a layers × heads grid: ~ what 1.3 inch at 110 dpi shows


def to_display(image: Any) -> np.ndarray:
    """uint8 / float array (HW, HWC) or PIL image -> float RGB [H, W, 3] in [0, 1]."""
    arr = np.asarray(image)
    arr = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"cannot display an image of shape {arr.shape}")
    return np.clip(arr[..., :3], 0.0, 1.0)


def shrink(image: np.ndarray, longest: int = TILE) -> np.ndarray:
    """RGB [H, W, 3] -> at most ``longest`` pixels a side (antialiased), so grids of many maps stay small files."""
    h, w = image.shape[:2]
    if max(h, w) <= longest:
        return image
    size = (max(1, round(h * longest / max(h, w))), max(1, round(w * longest / max(h, w))))
    t = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()


def upsample(heat: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., gh, gw] -> [..., H, W] bilinearly, so a patch map lines up with the image."""
    t = torch.as_tensor(np.asarray(heat), dtype=torch.float32)
    lead = t.shape[:-2]
    t = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return t.reshape(*lead, *size).numpy()


def stretch(heat: np.ndarray) -> np.ndarray:
    """Min-max scale each map (last two axes) to [0, 1]: near-uniform layers still show their pattern."""
    lo, hi = heat.min(axis=(-2, -1), keepdims=True), heat.max(axis=(-2, -1), keepdims=True)
    return (heat - lo) / np.where(hi > lo, hi - lo, 1.0)


def blend(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB image [H, W, 3] and maps [..., H, W] in [0, 1] -> heat-coloured overlays [..., H, W, 3]."""
    coloured = plt.get_cmap(HEAT)(np.clip(heat, 0.0, 1.0))[..., :3]
    return (1 - ALPHA) * image + ALPHA * coloured


def rollout_strip(rollout: torch.Tensor, image: Any, min_side: int = 224) -> np.ndarray:
    """The input and its rollout overlay side by side, RGB [H, 2W, 3] in [0, 1]; small inputs are
    enlarged (nearest neighbour, so patches stay sharp) to at least ``min_side`` pixels tall."""
    img = to_display(image)
    strip = np.concatenate([img, blend(img, stretch(upsample(rollout, img.shape[:2])))], axis=1)
    scale = max(1, -(-min_side // img.shape[0]))
    return strip.repeat(scale, axis=0).repeat(scale, axis=1)


def mosaic(tiles: np.ndarray, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tiles [R, C, h, w(, 3)] -> one image with ``gap`` pixels of ``fill`` between tiles."""
    r, c, h, w = tiles.shape[:4]
    out = np.full((r * (h + gap) - gap, c * (w + gap) - gap) + tiles.shape[4:], fill, dtype=np.float64)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tiles[i, j]
    return out


def _tile_ticks(ax: plt.Axes, rows: int, cols: int, h: int, w: int, gap: int, xlabel: str, ylabel: str,
                xnames: list[str] | None = None, ynames: list[str] | None = None) -> None:
    ax.set_xticks([j * (w + gap) + (w - 1) / 2 for j in range(cols)], xnames or [str(j + 1) for j in range(cols)])
    ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(rows)], ynames or [str(i + 1) for i in range(rows)])
    ax.tick_params(length=0, labelsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for side in ax.spines.values():
        side.set_visible(False)


def _save(fig: plt.Figure, path: Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight", pad_inches=0.1)


def plot_class_attention(attn: torch.Tensor, image: Any, path: Path, title: str = "") -> Path:
    """Layers × heads grid of the [class] token's attention [layers, heads, gh, gw] over the image."""
    img = shrink(to_display(image))
    layers, heads = attn.shape[:2]
    heat = stretch(upsample(attn, img.shape[:2]))
    tiles = blend(img, heat)
    gap = max(1, img.shape[0] // 16)
    fig, ax = plt.subplots(layout="constrained", figsize=(1.3 * heads + 1.6, 1.3 * layers + 0.8))
    ax.imshow(mosaic(tiles, gap=gap, fill=1.0))
    _tile_ticks(ax, layers, heads, img.shape[0], img.shape[1], gap, "head", "layer")
    fig.colorbar(ScalarMappable(Normalize(0, 1), HEAT), ax=ax, fraction=0.04, pad=0.02,
                 label="attention, min–max scaled per map")
    ax.set_title(title or "[class]-token attention per layer and head")
    return _save(fig, path)


def plot_rollout(rollout: torch.Tensor, image: Any, path: Path, title: str = "") -> Path:
    """Input, rollout map [gh, gw] with its values, and the overlay, side by side."""
    img = to_display(image)
    heat = np.asarray(rollout, dtype=np.float64)
    fig, axes = plt.subplots(1, 3, layout="constrained", figsize=(9.6, 3.4))
    axes[0].imshow(img)
    axes[0].set_title("input")
    im = axes[1].imshow(heat, cmap=HEAT)
    axes[1].set_title("attention rollout (per patch)")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="rollout weight")
    axes[2].imshow(blend(img, stretch(upsample(heat, img.shape[:2]))))
    axes[2].set_title("overlay")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _component_tile(comp: np.ndarray) -> np.ndarray:
    """One component [C, P, P] -> displayable RGB [P, P, 3], stretched to [0, 1] (sign and scale are arbitrary)."""
    img = comp.transpose(1, 2, 0) if comp.shape[0] == 3 else np.repeat(comp.mean(0)[..., None], 3, -1)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.full_like(img, 0.5)


def plot_filter_components(components: torch.Tensor, ratios: torch.Tensor, path: Path, cols: int = 7) -> Path:
    """Principal components [n, C, P, P] of the patch-embedding filters as P×P images."""
    comps = np.asarray(components, dtype=np.float64)
    n, c, ph, pw = comps.shape
    rows = -(-n // cols)
    tiles = np.ones((rows, cols, ph, pw, 3))
    for k in range(n):
        tiles[k // cols, k % cols] = _component_tile(comps[k])
    gap = max(1, ph // 4)
    fig, ax = plt.subplots(layout="constrained", figsize=(1.1 * cols + 0.5, 1.1 * rows + 0.9))
    ax.imshow(mosaic(tiles, gap=gap, fill=1.0), interpolation="nearest")
    for k in range(n):
        ax.text((k % cols) * (pw + gap), (k // cols) * (ph + gap) - 0.3, f"{k + 1}: {100 * float(ratios[k]):.1f}%",
                fontsize=7, va="bottom")
    ax.axis("off")
    kind = "RGB" if c == 3 else ("grayscale" if c == 1 else f"mean of {c} channels")
    ax.set_title(f"Patch-embedding filters: top {n} principal components ({kind}, {ph}×{pw})\n"
                 "label = rank: share of the filters' variance", fontsize=10)
    return _save(fig, path)


def plot_pos_embed_similarity(sim: torch.Tensor, path: Path) -> Path:
    """Grid [gh, gw, gh, gw]: tile (i, j) is the cosine similarity of position (i, j) to all positions."""
    s = np.asarray(sim, dtype=np.float64)
    gh, gw = s.shape[:2]
    fig, ax = plt.subplots(layout="constrained", figsize=(min(0.6 * gw + 2, 12), min(0.6 * gh + 1.2, 11)))
    im = ax.imshow(mosaic(s, gap=1), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    _tile_ticks(ax, gh, gw, gh, gw, 1, "input patch column", "input patch row")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="cosine similarity")
    ax.set_title("Position-embedding similarity")
    return _save(fig, path)


def plot_attention_distance(dist: np.ndarray, path: Path, uniform: float | None = None) -> Path:
    """One dot per head: mean attention distance (pixels) against network depth (layer)."""
    layers, heads = dist.shape
    fig, ax = plt.subplots(layout="constrained", figsize=(5.5, 4))
    depth = np.repeat(np.arange(1, layers + 1), heads)
    ax.scatter(depth, dist.reshape(-1), s=14, alpha=0.8, label=f"one dot per head ({heads} heads)")
    if uniform is not None:
        ax.axhline(uniform, color="gray", ls="--", lw=1, label="uniform attention over the image")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(1, layers + 1))
    ax.set_ylim(0, 1.1 * max(float(dist.max()), uniform or 0.0, 1e-6))
    ax.set_title("Mean attention distance")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)
