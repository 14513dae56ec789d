"""One recipe's spread over seeds: test top-1 and training minutes of each finished run folder.

    python benchmarks/seeds.py fmnist-vit runs/fmnist-vit runs/fmnist-vit-seed1   # -> results/seeds-fmnist-vit.json

A single run's figure can sit a tenth of a point either side of what the recipe gives on
average; the folders are runs of recipes/NAME.yaml that differ only in `--set seed=N`. Seeds
already in the JSON whose folders are not given keep their recorded figures (run folders do not
outlive a machine; the JSON does), and a folder replaces its seed's earlier entry.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from recipes import ROOT, _shown  # benchmarks/ is on sys.path when run as a script


def summarise(name: str, folders: list[Path], earlier: list[dict] = ()) -> dict:
    runs = []
    for folder in folders:
        report = json.loads((folder / "eval.json").read_text())
        recipe = json.loads((folder / "config.json").read_text())["recipe"]
        runs.append(dict(folder=_shown(str(folder.resolve())), seed=recipe["seed"], top1=report["top1"],
                         train_minutes=report["train_seconds"] / 60, cpu=report.get("cpu")))
    given = {r["seed"] for r in runs}
    runs = sorted([r for r in earlier if r["seed"] not in given] + runs, key=lambda r: r["seed"])
    top1 = [r["top1"] for r in runs]
    return dict(recipe=f"recipes/{name}.yaml", runs=runs, mean_top1=statistics.mean(top1),
                min_top1=min(top1), max_top1=max(top1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="recipe name (recipes/NAME.yaml)")
    ap.add_argument("folders", nargs="+", type=Path, help="finished run folders of that recipe")
    args = ap.parse_args(argv)
    path = ROOT / "benchmarks" / "results" / f"seeds-{args.name}.json"
    earlier = json.loads(path.read_text())["runs"] if path.exists() else []
    result = summarise(args.name, args.folders, earlier)
    path.write_text(json.dumps(result, indent=1))
    for r in result["runs"]:
        print(f"seed {r['seed']}: {100 * r['top1']:.2f}% in {r['train_minutes']:.1f} min ({r['folder']})")
    print(f"mean {100 * result['mean_top1']:.2f}%, {100 * result['min_top1']:.2f}-{100 * result['max_top1']:.2f}; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
