"""Record a finished `make demo` run (runs/demo/eval.json) as benchmarks/results/NAME.json.

Usage: python benchmarks/record_demo.py [RUN_DIR] [NAME]   (NAME defaults to demo-CPU, e.g. demo-amd-epyc, so
that a run on another machine never replaces this one's; the earlier hybrid demo's are demo-hybrid*.json)
The issue's target: >= 90% Fashion-MNIST test accuracy in <= 10 minutes of training on a 2-core CPU.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

from vitkit.machine import cpu_name


def default_name(cpu: str) -> str:
    """demo-amd-epyc for "AMD EPYC": the README names each demo result after its CPU."""
    return "demo-" + re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")


def main(run: Path, name: str | None = None) -> dict:
    report = json.loads((run / "eval.json").read_text())
    name = name or default_name(report.get("cpu") or cpu_name())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "model": report["model"], "recipe": json.loads((run / "config.json").read_text())["recipe"],
        "params": report["params"], "dataset": report["dataset"],
        "epochs": report["epochs"], "precision": report["precision"], "threads": report["threads"],
        "top1": report["top1"], "top5": report["top5"], "train_seconds": report["train_seconds"],
        "per_epoch": [{k: h[k] for k in ("epoch", "eval_top1", "epoch_seconds")} for h in history],
        "target": {"top1": 0.90, "train_seconds": 600},
        "met": report["top1"] >= 0.90 and report["train_seconds"] <= 600,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cpu": report.get("cpu") or cpu_name()},
    }
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("top1", "train_seconds", "met")}))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"), sys.argv[2] if len(sys.argv) > 2 else None)
