"""The family side by side on more than accuracy: parameters, GFLOPs per image, batch-1 and batch-32
latency, and peak training memory, for each family's 28x28 gray variant (the survey's point: FLOPs
predict latency badly, so both are measured).

    python benchmarks/family.py [--out family.json] [--models a,b,...]

Each model runs in its own process, so that its peak resident memory (``ru_maxrss``) is its own: the
training figure is the peak during three AdamW steps at batch 64 less the resident size before them.
Latency is the median of repeated eval-mode forward passes of the model prepared as `vitkit predict`
prepares it (bf16 where the CPU has bf16 units).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ["vit_mini_patch4_28", "sl_vit_mini_patch4_gap_28", "deit3_mini_patch4_28", "cait_mini_patch4_28",
          "convit_mini_patch4_28", "crossvit_mini_28", "pit_mini_28", "tnt_mini_patch4_28",
          "swin_mini_patch2_window7_28", "pvt_v2_mini_28", "levit_mini_28", "cvt_mini_28", "vit_hybrid_mini_28",
          "resnet_mini_28"]
RESULTS = Path(__file__).parent / "results"


def _latency_ms(model, x, repeats: int) -> float:
    import torch
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:  # warm-up passes are not counted
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(name: str) -> dict:
    """One model's row (run in a child process)."""
    import torch
    from vitkit.inference import prepare_for_inference
    from vitkit.models import count_params, create_model, model_flops

    torch.manual_seed(0)
    model = create_model(name)
    row = {"model": name, "params": count_params(model), "gflops": model_flops(name) / 1e9}
    prepared = prepare_for_inference(model.eval(), "auto")
    row["precision"] = getattr(prepared, "precision", "auto")
    for batch, repeats in ((1, 30), (32, 10)):
        row[f"latency_b{batch}_ms"] = _latency_ms(prepared, torch.randn(batch, 1, 28, 28), repeats)
    model = create_model(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    row["train_peak_mib_b64"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="family.json")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process's model
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    from vitkit.machine import cpu_name
    import torch
    rows = []
    for name in args.models.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        if done.returncode:
            rows.append({"model": name, "error": done.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "input": "1x28x28", "rows": rows,
              "note": "latency: median eval forward, prepared as vitkit predict does; train_peak_mib_b64: peak "
                      "RSS growth over three AdamW steps at batch 64, fp32"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {RESULTS / args.out}")


if __name__ == "__main__":
    main()
