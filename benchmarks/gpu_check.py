"""GPU check: the demo recipe on cuda against cpu, ViT-B/16 bf16 inference img/s with torch.compile, and a
2-process DDP run over NCCL. Writes benchmarks/results/gpu_check.json. Exits 0, saying so, without a GPU.

    python benchmarks/gpu_check.py [--skip-demo] [--batch 256] [--steps 50]

Targets (issue #35): the demo recipe's accuracy band on cuda as on cpu; >= 8,000 img/s for ViT-B/16 bf16
compiled at batch >= 256 on one H100 SXM (timm: 2,993 eager / 3,376 compiled on an RTX 4090, 4,379 compiled
on an RTX 5090; report PCIe cards separately).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"


def inference_throughput(batch: int, steps: int) -> dict:
    """ViT-B/16 at 224, bf16 weights, torch.compile, channels-last input; img/s over ``steps`` batches."""
    from vitkit.inference import prepare_for_inference
    from vitkit.models import create_model

    model = prepare_for_inference(create_model("vit_base_patch16_224"), "bf16", compile=True,
                                  device=torch.device("cuda"))
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    for _ in range(5):  # compile and warm up
        model(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model(x)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"model": "vit_base_patch16_224", "batch": batch, "precision": "bf16", "compiled": model.compiled,
            "img_per_s": batch * steps / seconds, "target_h100_sxm": 8000}


def train_run(device: str, out: Path, nproc: int = 1, epochs: int | None = None) -> dict:
    """The demo recipe (recipes/demo.yaml, else vitkit's defaults) as `vitkit train` runs it."""
    recipe = ROOT / "recipes" / "demo.yaml"
    args = ["train", "--device", device, "--output", str(out), "--overwrite"]
    args += ["--config", str(recipe)] if recipe.is_file() else []
    args += ["--epochs", str(epochs)] if epochs else []
    launcher = [sys.executable, "-m", "vitkit"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "-m", "vitkit"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.run(launcher + args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"device": device, "processes": nproc, "error": proc.stderr[-2000:]}
    report = json.loads((out / "eval.json").read_text())
    return {"device": report.get("device", device), "processes": nproc, "top1": report["top1"],
            "train_seconds": report["train_seconds"], "wall_seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--skip-demo", action="store_true", help="skip the cpu/cuda demo runs (the slow part)")
    parser.add_argument("--epochs", type=int, help="shorten the demo runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__}; nothing to measure (vitkit stays "
              "unverified on GPU)")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "cuda": torch.version.cuda}
    result["inference"] = inference_throughput(args.batch, args.steps)
    print(json.dumps(result["inference"]))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_demo:
            result["demo_cuda"] = train_run("cuda", Path(tmp) / "cuda", epochs=args.epochs)
            result["demo_cpu"] = train_run("cpu", Path(tmp) / "cpu", epochs=args.epochs)
        if torch.cuda.device_count() >= 2:
            result["ddp_2"] = train_run("cuda", Path(tmp) / "ddp", nproc=2, epochs=args.epochs or 2)
        else:
            result["ddp_2"] = {"skipped": "one GPU: run with 2 GPUs for the NCCL DDP check"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
