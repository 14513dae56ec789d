"""ViT or CNN for N labelled images? The ViT paper's central claim at small scale: on little data a ViT
loses to a CNN, and it catches up as the data grows. The plain ViT, SL-ViT, the hybrid and the CNN train
from scratch on 1k, 3k, 10k, 30k and all (59.5k) Fashion-MNIST training images, and the MAE-pretrained
ViT is fine-tuned on the same subsets, each run given the same training time (--seconds, one thread,
two runs at a time). Validation is 50 images per class carved from the training images (not in any
subset); test top-1 of the last model is reported. The MAE's pretraining time is not in the budget: it
is paid once, on unlabeled images.

Equal time is set by the number of optimiser steps (`--steps`, batch 64 for every run): each model's
training step is timed first (one thread), and a run gets the steps that fill --seconds, whatever the
size of its subset (a small subset is seen many times, a large one less than once); the JSON records
the seconds each run really took. Whole epochs would not do: a 90-s budget is less than one epoch of
the larger subsets, so they would get more or less time than the others by rounding. Also --full-minutes: the MAE fine-tuned on all labels for that long with
recipes/fmnist-mae-finetune.yaml (the full-label row; one thread, beside the other runs).

    PYTHONPATH=src python benchmarks/data_size.py --mae-run runs/mae --runs runs/data-size
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mae_throughput import images_per_second as timed_steps  # noqa: E402
from runqueue import Run, result, run_all  # noqa: E402

import vitkit  # noqa: E402
from vitkit.machine import cpu_name  # noqa: E402
from vitkit.train.precision import autocast, resolve_precision  # noqa: E402

VAL_PER_CLASS = 50
POOL = 60_000 - 10 * VAL_PER_CLASS
SIZES = (1_000, 3_000, 10_000, 30_000, POOL)
BATCH = 64
WARMUP = 0.1  # share of the steps: warmup counted in epochs would outlast a short run on a large subset
FULL_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes/fmnist-mae-finetune.yaml")
# label -> (registered model timed for the budget, vitkit arguments)
MODELS: dict[str, tuple[str, list[str]]] = {
    "ViT (vit_mini_patch4_28)": ("vit_mini_patch4_28", ["train", "--model", "vit_mini_patch4_28"]),
    "SL-ViT (sl_vit_mini_patch4_gap_28)": ("sl_vit_mini_patch4_gap_28",
                                           ["train", "--model", "sl_vit_mini_patch4_gap_28"]),
    "hybrid (vit_hybrid_resnet_mini_28)": ("vit_hybrid_resnet_mini_28",
                                           ["train", "--model", "vit_hybrid_resnet_mini_28", "--set",
                                            "channels_last=true"]),
    "CNN (resnet_mini_28)": ("resnet_mini_28", ["train", "--model", "resnet_mini_28", "--set", "channels_last=true"]),
    "MAE ViT (fine-tuned)": ("vit_mini_patch4_28", ["finetune", "--checkpoint", "{mae}", "--layer-decay", "0.75"]),
}


def images_per_second(name: str, batch: int, seconds: float = 4.0) -> float:
    """Training steps of ``name`` at ``batch`` on one thread, in the precision vitkit picks here."""
    torch.set_num_threads(1)
    model = vitkit.create_model(name, num_classes=10).train()
    if name.startswith(("resnet", "vit_hybrid")):
        model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    precision = resolve_precision("auto")

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        with autocast(precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_steps(model, step, batch, seconds)


def subset_args(n: int) -> list[str]:
    return [] if n == POOL else ["--labels-per-class", str(n // 10)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mae-run", required=True)
    ap.add_argument("--runs", default="runs/data-size")
    ap.add_argument("--seconds", type=float, default=90.0, help="training time of every run")
    ap.add_argument("--full-minutes", type=float, default=0.0, help="also fine-tune the MAE on all labels this long")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/data_size.json")
    ap.add_argument("--figure", default="docs/data-size.png")
    args = ap.parse_args()
    root, mae = Path(args.runs), str(Path(args.mae_run).resolve())
    root.mkdir(parents=True, exist_ok=True)
    timed = root / "images_per_second.json"  # timed once: a resumed study gives every run the same budget
    if not timed.is_file():
        timed.write_text(json.dumps({m: images_per_second(m, BATCH) for m, _ in MODELS.values()}))
    speed = json.loads(timed.read_text())
    runs, plan = [], {}
    if args.full_minutes:  # first: the longest run goes beside the others
        epochs = max(1, math.floor(args.full_minutes * 60 * speed["vit_mini_patch4_28"] / POOL))
        runs.append(Run(root / "mae_ft_full", ["finetune", "--checkpoint", mae, "--config", FULL_RECIPE,
                                               "--epochs", str(epochs)]))
    for label, (name, argv) in MODELS.items():
        steps = max(1, math.floor(args.seconds * speed[name] / BATCH))
        for n in SIZES:
            folder = root / f"{name if argv[0] == 'train' else 'mae_ft'}_{n}"
            plan[(label, n)] = folder
            runs.append(Run(folder, [a.replace("{mae}", mae) for a in argv] + subset_args(n) + [
                "--dataset", "fashion-mnist", "--val-from-train", str(VAL_PER_CLASS), "--batch-size", str(BATCH),
                "--steps", str(steps), "--warmup-epochs", f"{WARMUP * steps / (n // BATCH):.4f}"]))
    run_all(runs, args.parallel)
    out = {"cpu": cpu_name(), "threads_per_run": 1, "parallel_runs": args.parallel, "budget_seconds": args.seconds,
           "validation": f"{VAL_PER_CLASS} per class carved from the training images",
           "batch_size": BATCH, "images_per_second_1_thread": {m: round(v, 1) for m, v in speed.items()},
           "rows": {label: {str(n): result(plan[(label, n)]) for n in SIZES} for label in MODELS}}
    if args.full_minutes:
        out["mae_full_labels"] = result(root / "mae_ft_full")
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    draw(out, Path(args.figure))


def draw(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, row in out["rows"].items():
        sizes = sorted(row, key=int)
        ax.plot([int(n) for n in sizes], [100 * row[n]["test_top1"] for n in sizes], marker="o",
                ls="--" if label.startswith("MAE") else "-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images (Fashion-MNIST)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Equal training time: the steps that fill {out['budget_seconds']:.0f} s on one thread", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
