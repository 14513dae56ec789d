"""Many `vitkit` runs, a few at a time, each on one thread, for the studies that train dozens of small
models (mae_few_labels.py, data_size.py). On two cores two one-thread runs finish sooner than two
two-thread runs in a row, and every run sees the same kind of machine, so their times compare.

A run whose folder holds eval.json is done and skipped: a killed study picks up where it stopped
(an unfinished run starts over).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm


@dataclass
class Run:
    folder: Path
    argv: list[str]  # vitkit's arguments, without --output


def done(folder: Path) -> bool:
    return (folder / "eval.json").is_file()


def run_all(runs: list[Run], parallel: int = 2) -> None:
    """Run what is not done yet, ``parallel`` at a time; a failed run stops the study with its log."""
    todo = [r for r in runs if not done(r.folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    active: list[tuple[Run, subprocess.Popen, Any]] = []
    with tqdm(total=len(todo), desc="runs", unit="run") as bar:
        while todo or active:
            while todo and len(active) < parallel:
                run = todo.pop(0)
                run.folder.parent.mkdir(parents=True, exist_ok=True)
                log = open(run.folder.with_suffix(".log"), "w")
                cmd = [sys.executable, "-m", "vitkit", *run.argv, "--output", str(run.folder), "--overwrite"]
                active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            time.sleep(1)
            for item in [a for a in active if a[1].poll() is not None]:
                run, proc, log = item
                log.close()
                active.remove(item)
                if proc.returncode:
                    for _, other, _ in active:
                        other.kill()
                    tail = run.folder.with_suffix(".log").read_text()[-2000:]
                    raise SystemExit(f"{run.folder} failed ({proc.returncode}):\n{tail}")
                bar.update(1)


def result(folder: Path) -> dict[str, float]:
    """The last model's test top-1 (eval.json) and validation top-1 (what picks a recipe), and training seconds."""
    report = json.loads((folder / "eval.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"test_top1": report["top1"], "val_top1": rows[-1]["eval_top1"],
            "train_seconds": round(report["train_seconds"], 1), "epochs": report["epochs"], "steps": rows[-1]["step"]}
