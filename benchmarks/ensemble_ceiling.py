"""What the finished Fashion-MNIST runs know together: test top-1 of every run, of the mean of the
predicted probabilities of every pair and triple of runs, and of each run with flip test-time
augmentation. If no mix reaches a target, no student distilled from these runs will either.

    python benchmarks/ensemble_ceiling.py [RUN ...]   # default: every runs/fmnist-* with an eval.json
                                                      # -> benchmarks/results/ensemble_ceiling.json
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch

from vitkit.data import normalize
from vitkit.data.fashion_mnist import load_fashion_mnist
from vitkit.train import load_checkpoint
from vitkit.train.precision import autocast, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "ensemble_ceiling.json"


@torch.inference_mode()
def probabilities(run: Path, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    model, meta = load_checkpoint(run)
    x = images.flip(-1) if flip else images
    with autocast(resolve_precision("auto")):
        return torch.cat([model(normalize(x[i:i + 1000], meta["mean"], meta["std"])).float().softmax(-1)
                          for i in range(0, len(x), 1000)])


def main(names: list[str]) -> None:
    runs = [ROOT / "runs" / n for n in names] if names else sorted(
        p for p in (ROOT / "runs").glob("fmnist-*") if (p / "eval.json").is_file())
    images, labels = load_fashion_mnist("test")
    top1 = lambda p: round((p.argmax(-1) == labels).double().mean().item(), 4)  # noqa: E731
    probs = {r.name: probabilities(r, images) for r in runs}
    single = {n: {"top1": top1(p), "flip_tta_top1": top1(p + probabilities(ROOT / "runs" / n, images, flip=True))}
              for n, p in probs.items()}
    mixes = {" + ".join(c): top1(sum(probs[n] for n in c))
             for k in (2, 3) for c in itertools.combinations(sorted(probs), k)}
    best = sorted(mixes.items(), key=lambda kv: -kv[1])[:5]
    RESULT.write_text(json.dumps({"runs": single, "best_mixes": dict(best), "mixes": mixes}, indent=2) + "\n")
    for n, r in sorted(single.items(), key=lambda kv: kv[1]["top1"]):
        print(f"{n:28s} {100 * r['top1']:.2f}%  flip TTA {100 * r['flip_tta_top1']:.2f}%")
    for mix, acc in best:
        print(f"{100 * acc:.2f}%  {mix}")


if __name__ == "__main__":
    main(sys.argv[1:])
