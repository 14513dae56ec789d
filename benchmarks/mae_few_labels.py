"""Few labels on Fashion-MNIST: MAE pretrained on the 60,000 unlabeled training images, then fine-tuned
(or linearly probed) on K labelled images per class, against logistic regression and kNN on pixels,
vitkit's CNN and the best from-scratch ViT recipe, each row the mean over 3 seeded draws of the subset.

Recipes are chosen on a validation split carved from the training images (50 per class, the same for
every run: `--val-from-train 50`); the labelled subsets are drawn from the rest; only the chosen
recipes' test top-1 is reported. Each candidate runs on seed 0, the best on validation then on seeds
1 and 2. Runs go two at a time on one thread each (benchmarks/runqueue.py); a killed study resumes.

    # first pretrain (about 40 minutes on 2 cores): vitkit pretrain --config recipes/fmnist-mae.yaml --output runs/mae
    PYTHONPATH=src python benchmarks/mae_few_labels.py --mae-run runs/mae --runs runs/few-labels
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runqueue import Run, result, run_all  # noqa: E402

from vitkit.data import load_dataset  # noqa: E402
from vitkit.data.subset import labelled_subset, split_validation  # noqa: E402
from vitkit.machine import cpu_name  # noqa: E402

VAL_PER_CLASS = 50
SEEDS = (0, 1, 2)
DEIT_AUG = ["--set", "randaugment=rand-m9-mstd0.5-inc1", "--set", "reprob=0.25"]
# name -> (family, vitkit arguments); a family's candidates compete on validation (seed 0)
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "vit_mini": ("vit_scratch", ["train", "--model", "vit_mini_patch4_28"]),
    "sl_vit_gap": ("vit_scratch", ["train", "--model", "sl_vit_mini_patch4_gap_28"]),
    "sl_vit_gap_deit_aug": ("vit_scratch", ["train", "--model", "sl_vit_mini_patch4_gap_28", *DEIT_AUG]),
    "resnet_mini": ("cnn", ["train", "--model", "resnet_mini_28", "--set", "channels_last=true"]),
    "mae_ft": ("mae_finetune", ["finetune", "--checkpoint", "{mae}", "--layer-decay", "0.75"]),
    "mae_ft_deit_aug": ("mae_finetune", ["finetune", "--checkpoint", "{mae}", "--layer-decay", "0.75", *DEIT_AUG]),
    "mae_probe": ("mae_linear_probe", ["finetune", "--checkpoint", "{mae}", "--linear-probe", "--lr", "0.01",
                                       "--weight-decay", "0"]),
}


def run(name: str, k: int, seed: int, root: Path, mae: str) -> Run:
    argv = [a.replace("{mae}", mae) for a in CANDIDATES[name][1]]
    return Run(root / f"{name}_k{k}_s{seed}", [*argv, "--dataset", "fashion-mnist", "--labels-per-class", str(k),
                                               "--seed", str(seed), "--val-from-train", str(VAL_PER_CLASS)])


def pixel_baselines(k: int, seed: int) -> dict[str, float]:
    """Logistic regression and kNN (k = 1 and 5 tried, the better on validation kept) on raw pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    pool, val = split_validation(load_dataset("fashion-mnist", "train"), VAL_PER_CLASS)
    few, test = labelled_subset(pool, k, seed), load_dataset("fashion-mnist", "test")
    xy = lambda ds: (ds.images.flatten(1).float().numpy() / 255, ds.targets.numpy())  # noqa: E731
    (xtr, ytr), (xva, yva), (xte, yte) = xy(few), xy(val), xy(test)
    out = {"logreg": float(np.mean(LogisticRegression(max_iter=3000).fit(xtr, ytr).predict(xte) == yte))}
    knns = [KNeighborsClassifier(n_neighbors=n).fit(xtr, ytr) for n in (1, 5)]
    best = max(knns, key=lambda m: np.mean(m.predict(xva) == yva))
    out["knn"] = float(np.mean(best.predict(xte) == yte))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mae-run", required=True, help="the MAE pretraining run (recipes/fmnist-mae.yaml)")
    ap.add_argument("--runs", default="runs/few-labels")
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 60])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--only", nargs="+", help="candidates to run (e.g. the ones that need no MAE run yet)")
    ap.add_argument("--json", default="benchmarks/results/mae_few_labels.json")
    args = ap.parse_args()
    root, mae = Path(args.runs), str(Path(args.mae_run).resolve())
    names = args.only or list(CANDIDATES)
    start = time.perf_counter()
    run_all([run(n, k, 0, root, mae) for k in args.per_class for n in names], args.parallel)
    chosen = {}
    for k in args.per_class:
        for family in dict.fromkeys(CANDIDATES[n][0] for n in names):
            rivals = [n for n in names if CANDIDATES[n][0] == family]
            chosen[(k, family)] = max(rivals, key=lambda n: result(root / f"{n}_k{k}_s0")["val_top1"])
    run_all([run(n, k, s, root, mae) for (k, _), n in chosen.items() for s in SEEDS[1:]], args.parallel)
    pretrain = json.loads((Path(mae) / "eval.json").read_text())
    out = {"cpu": cpu_name(), "threads_per_run": 1, "parallel_runs": args.parallel, "seeds": list(SEEDS),
           "validation": f"{VAL_PER_CLASS} per class carved from the training images",
           "mae_pretrain": {"run": args.mae_run, "train_seconds": round(pretrain["train_seconds"]),
                            "epochs": pretrain["epochs"], "reconstruction_loss": pretrain["reconstruction_loss"],
                            "session_wall_seconds": round(pretrain["session_wall_seconds"])},
           "study_seconds": round(time.perf_counter() - start), "rows": {}}
    for k in args.per_class:
        row: dict = {"validation_top1_seed0": {n: result(root / f"{n}_k{k}_s0")["val_top1"] for n in names}}
        pixels = [pixel_baselines(k, s) for s in SEEDS]
        for key in ("logreg", "knn"):
            row[key] = _summary([p[key] for p in pixels])
        for (kk, family), name in chosen.items():
            if kk == k:
                runs = [result(root / f"{name}_k{k}_s{s}") for s in SEEDS]
                row[family] = {"recipe": name, **_summary([r["test_top1"] for r in runs]),
                               "train_seconds": [r["train_seconds"] for r in runs]}
        out["rows"][f"{k}_per_class"] = row
        print(k, json.dumps(row), flush=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4),
            "each": [round(v, 4) for v in values]}


if __name__ == "__main__":
    main()
