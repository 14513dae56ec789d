"""MAE pretraining step vs a supervised step of the same encoder: images/s on this CPU.

With 75% masking the encoder processes a quarter of the patch tokens (plus [class]); the decoder,
which sees every token, and the fixed costs (patch embedding, optimiser step) are what keep the
speed-up under 4x. Writes benchmarks/results/mae_throughput.json (the CPU named).

    PYTHONPATH=src python benchmarks/mae_throughput.py [--model mae_vit_mini_patch4_28] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import vitkit
from vitkit.machine import cpu_name
from vitkit.train.optim import create_optimizer


def images_per_second(model: torch.nn.Module, step, batch: int, seconds: float) -> float:
    opt = create_optimizer(model, "adamw", 1e-4, 0.05)
    for _ in range(3):  # warm-up
        step(model, opt)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(model, opt)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mae_vit_mini_patch4_28")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--out", default="benchmarks/results/mae_throughput.json")
    args = ap.parse_args()
    mae = vitkit.create_model(args.model).train()
    vit = mae.encoder(num_classes=10).train()
    chans, size = mae.patch_embed.in_chans, mae.patch_embed.img_size[0]
    x, y = torch.randn(args.batch, chans, size, size), torch.randint(0, 10, (args.batch,))

    autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16")

    def mae_step(model, opt):
        with autocast:
            loss = model(x, mask_ratio=0.75)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def supervised_step(model, opt):
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        pre = images_per_second(mae, mae_step, args.batch, args.seconds)
        sup = images_per_second(vit, supervised_step, args.batch, args.seconds)
        rows.append({"threads": threads, "mae_images_per_s": round(pre, 1), "supervised_images_per_s": round(sup, 1),
                     "speedup": round(pre / sup, 2)})
        print(rows[-1], flush=True)
    result = {"model": args.model, "encoder_tokens_supervised": mae.patch_embed.num_patches + 1,
              "encoder_tokens_mae": int(mae.patch_embed.num_patches * 0.25) + 1, "batch": args.batch,
              "precision": args.precision, "cpu": cpu_name(), "note": "target >= 2x",
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
