"""Few labels on Fashion-MNIST: MAE pretraining on the unlabeled training images, then fine-tuning
(and a linear probe) on K labelled images per class, against a from-scratch ViT, logistic regression
and kNN on pixels. A REDUCED budget (this is a shared 2-core CPU): --pretrain-epochs of MAE over the first
--pretrain-images of the 60,000, one seeded subset draw (not 3), and per-epoch validation on the first 1,000 test
images (the final score is on all 10,000). Writes benchmarks/results/mae_few_labels.json.

    PYTHONPATH=src python benchmarks/mae_few_labels.py --pretrain-epochs 1 --per-class 10 60
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vitkit.data import load_dataset
from vitkit.data.subset import labelled_subset
from vitkit.machine import cpu_name
from vitkit.train import TrainConfig, train
from vitkit.train.engine import Trainer

_evaluate = Trainer.evaluate


def _quick_val(self, model=None, dataset=None):
    """Per-epoch validation on 1,000 held-out images; the final report still scores all of them."""
    if dataset is None:
        from vitkit.data import InMemoryDataset
        ds = self.eval_ds
        dataset = InMemoryDataset(ds.images[:1000], ds.targets[:1000], ds.classes, ds.mean, ds.std, ds.name)
    return _evaluate(self, model, dataset)


Trainer.evaluate = _quick_val
PRETRAIN_IMAGES = 60_000


def _pretrain_share(self, cfg):
    """The first PRETRAIN_IMAGES unlabeled training images (the budget cut; all 60,000 by default)."""
    from vitkit.data import InMemoryDataset
    train_ds, val_ds, test_ds = _mae_datasets(self, cfg)
    n = min(PRETRAIN_IMAGES, len(train_ds))
    cut = InMemoryDataset(train_ds.images[:n], train_ds.targets[:n], train_ds.classes, train_ds.mean, train_ds.std,
                          train_ds.name)
    cut.flip_invariant = train_ds.flip_invariant
    return cut, val_ds, test_ds


from vitkit.train.pretrain import MaeTrainer  # noqa: E402

_mae_datasets = MaeTrainer._datasets
MaeTrainer._datasets = _pretrain_share


def pixel_baselines(k: int, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    train_ds, test_ds = labelled_subset(load_dataset("fashion-mnist", "train"), k, seed), load_dataset(
        "fashion-mnist", "test")
    xtr, ytr = train_ds.images.flatten(1).float().numpy() / 255, train_ds.targets.numpy()
    xte, yte = test_ds.images.flatten(1).float().numpy() / 255, test_ds.targets.numpy()
    logreg = LogisticRegression(max_iter=2000, C=1.0).fit(xtr, ytr)
    knn = KNeighborsClassifier(n_neighbors=min(5, k)).fit(xtr, ytr)
    return {"logreg": float(np.mean(logreg.predict(xte) == yte)), "knn": float(np.mean(knn.predict(xte) == yte))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-epochs", type=int, default=1)
    ap.add_argument("--pretrain-images", type=int, default=60_000)
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 60])
    ap.add_argument("--ft-epochs", type=int, default=15)
    ap.add_argument("--out-dir", default="/tmp/mae_few_labels")
    ap.add_argument("--json", default="benchmarks/results/mae_few_labels.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    global PRETRAIN_IMAGES
    PRETRAIN_IMAGES = args.pretrain_images
    out, seed = Path(args.out_dir), 0
    result = {"cpu": cpu_name(), "threads": 2, "seed_draws": 1, "pretrain_epochs": args.pretrain_epochs,
              "pretrain_images": args.pretrain_images,
              "note": "reduced budget: see the script's docstring", "rows": {}}

    def save():
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    start = time.perf_counter()
    pre = train(TrainConfig.from_dict(dict(
        objective="mae", model="mae_vit_mini_patch4_28", dataset="fashion-mnist", output=str(out / "mae"),
        epochs=args.pretrain_epochs, batch_size=256, lr=1.5e-3, betas=[0.9, 0.95], weight_decay=0.05,
        warmup_epochs=0.2, precision="fp32", crop_padding=2)), overwrite=True)
    result["pretrain"] = {"seconds": time.perf_counter() - start, "reconstruction_loss": pre["reconstruction_loss"]}
    save()
    for k in args.per_class:
        row = pixel_baselines(k, seed)
        common = dict(dataset="fashion-mnist", labels_per_class=k, seed=seed, epochs=args.ft_epochs,
                      batch_size=32 if k <= 10 else 64, precision="fp32", warmup_epochs=1.0)
        runs = {"vit_scratch": dict(model="vit_mini_patch4_28", lr=1e-3),
                "mae_finetune": dict(init_from=str(out / "mae"), lr=1e-3, layer_decay=0.75),
                "mae_linear_probe": dict(init_from=str(out / "mae"), lr=1e-2, linear_probe=True, weight_decay=0.0)}
        for name, kw in runs.items():
            t = time.perf_counter()
            report = train(TrainConfig.from_dict({**common, **kw, "output": str(out / f"{name}_{k}")}), overwrite=True)
            row[name] = report["top1"]
            row[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
            result["rows"][f"{k}_per_class"] = row
            save()
        print(k, row, flush=True)


if __name__ == "__main__":
    main()
