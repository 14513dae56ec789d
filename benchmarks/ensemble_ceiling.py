"""What the finished Fashion-MNIST runs know together: test top-1 of every run, of the mean of the
predicted probabilities of every pair and triple of runs, and of each run with flip test-time
augmentation (`vitkit eval --flip-tta`: the mean of the logits of each image and its mirror). If no
mix reaches a target, a student distilled from these runs is unlikely to.

    python benchmarks/ensemble_ceiling.py [RUN ...]   # default: every runs/fmnist-* with an eval.json
                                                      # -> benchmarks/results/ensemble_ceiling.json
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch

from vitkit.data.fashion_mnist import load_fashion_mnist
from vitkit.train import load_checkpoint, predict_logits
from vitkit.train.precision import resolve_precision

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "ensemble_ceiling.json"


def probabilities(run: Path, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """The run's predicted probabilities, as `vitkit eval` computes its logits (``--flip-tta`` too)."""
    model, meta = load_checkpoint(run)
    batches = [(chunk, torch.zeros(len(chunk), dtype=torch.long)) for chunk in images.split(1000)]
    logits, _ = predict_logits(model, batches, meta["mean"], meta["std"], resolve_precision("auto"),
                               flip_tta=flip_tta)
    return logits.softmax(-1)


def main(names: list[str]) -> None:
    runs = [ROOT / "runs" / n for n in names] if names else sorted(
        p for p in (ROOT / "runs").glob("fmnist-*") if (p / "eval.json").is_file())
    images, labels = load_fashion_mnist("test")
    top1 = lambda p: round((p.argmax(-1) == labels).double().mean().item(), 4)  # noqa: E731
    probs = {r.name: probabilities(r, images) for r in runs}
    single = {n: {"top1": top1(p), "flip_tta_top1": top1(probabilities(ROOT / "runs" / n, images, True))}
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
