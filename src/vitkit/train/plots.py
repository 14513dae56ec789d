"""PNG figures of a run: loss/accuracy curves and the confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fileio import save_figure  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss, and eval accuracy where the run classifies (an MAE run plots its reconstruction loss alone)."""
    epochs = [h["epoch"] for h in history]
    classifies = all("eval_top1" in h for h in history)
    fig, axes = plt.subplots(1, 2 if classifies else 1, figsize=(10 if classifies else 5.5, 3.8), squeeze=False)
    ax_loss = axes[0, 0]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["eval_loss"] for h in history], "o-", label="eval")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy" if classifies else "MSE on masked patches",
                title="loss" if classifies else "reconstruction loss")
    ax_loss.legend()
    if not classifies:
        fig.tight_layout()
        save_figure(fig, path)
        return
    ax_acc = axes[0, 1]
    ax_acc.plot(epochs, [100 * h["eval_top1"] for h in history], "o-", color="C2")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="eval accuracy")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path) -> None:
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(classes)
    size = max(5.0, 0.55 * min(k, 30) + 2)  # past 30 classes (no labels) a pixel a class: 1000 classes at 0.55 in
                                            # each would be a 60000-px square (15 GB)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised colour, counts)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)
