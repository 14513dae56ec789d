"""Fashion-MNIST test accuracy of a checkpoint through prepare_for_inference at each precision.

Usage: python benchmarks/precision_accuracy.py [RUN_DIR]   (default runs/demo)
The issue's bar: bf16 and int8 change test accuracy by <= 0.3 points. Writes
benchmarks/results/precision_accuracy.json (runs/demo) or precision_accuracy-<RUN_DIR name>.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from vitkit.data import load_dataset
from vitkit.inference import prepare_for_inference
from vitkit.train import evaluate_dataset, load_checkpoint
from vitkit.machine import cpu_name


def main(run: Path) -> dict:
    model, meta = load_checkpoint(run)
    ds = load_dataset(meta["dataset"], "test", img_size=meta["img_size"], in_chans=meta["in_chans"])
    results = {}
    for precision in ("fp32", "bf16", "int8"):
        fast = prepare_for_inference(model, precision)
        start = time.perf_counter()
        metrics = evaluate_dataset(fast, ds, meta["mean"], meta["std"], batch_size=256)
        results[precision] = {"top1": metrics["top1"], "seconds": time.perf_counter() - start}
    for p in ("bf16", "int8"):
        results[p]["delta_points"] = 100 * (results[p]["top1"] - results["fp32"]["top1"])
    name = "precision_accuracy" + ("" if run.name == "demo" else f"-{run.name}")
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.write_text(json.dumps({"checkpoint": str(run), "model": meta.get("recipe", {}).get("model"), "cpu": cpu_name(),
                               "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
