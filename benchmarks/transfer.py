"""The paper's transfer recipe at toy scale: pretrain on Fashion-MNIST, fine-tune on scikit-learn digits.

Usage: python benchmarks/transfer.py [PRETRAINED_RUN [NAME]]   (default runs/demo, made by `make demo`)
Compares, on digits (1,437 train / 360 test images, upsampled from 8x8): the same architecture trained
from scratch, fine-tuned at the pretraining resolution (28 px), and fine-tuned at 2x (56 px, position
embeddings resampled from 7x7 to 14x14). Writes benchmarks/results/transfer-NAME.json (NAME: the
run folder's name unless given; the README's are transfer-sl-vit, the demo's SL-ViT, and
transfer-hybrid and transfer-pure-vit, the earlier hybrid and plain-ViT demos).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vitkit.train import TrainConfig, train

COMMON = dict(dataset="digits", epochs=15, batch_size=64, lr=1e-3, warmup_epochs=1, precision="auto",
              crop_padding=0, hflip=False, drop_path_rate=0.0, log_every=1000)


def main(pretrained: Path, name: str, out_root: Path = Path("runs/transfer")) -> dict:
    recipe = json.loads((pretrained / "config.json").read_text())["recipe"]
    runs = {
        "scratch_28px": dict(model=recipe["model"], model_kwargs=recipe["model_kwargs"], img_size=28, lr=3e-3),
        "finetune_28px": dict(init_from=str(pretrained)),
        "finetune_56px": dict(init_from=str(pretrained), img_size=56),
        "linear_probe_28px": dict(init_from=str(pretrained), linear_probe=True, lr=1e-2),
    }
    results = {}
    for run_name, extra in runs.items():
        report = train(TrainConfig.from_dict({**COMMON, **extra, "output": str(out_root / name / run_name)}),
                       overwrite=True)
        results[run_name] = {"top1": report["top1"], "train_seconds": report["train_seconds"]}
        print(f"{run_name}: top-1 {100 * report['top1']:.2f}%  ({report['train_seconds']:.0f}s)", flush=True)
    out = Path(__file__).parent / "results" / f"transfer-{name}.json"
    out.write_text(json.dumps({"pretrained": str(pretrained), "recipe": COMMON, "runs": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    main(run, sys.argv[2] if len(sys.argv) > 2 else run.name)
