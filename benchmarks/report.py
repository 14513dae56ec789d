"""Print the README tables and the issue's targets from a results file.

    python benchmarks/report.py benchmarks/results/cpu.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _best(rows: list[dict], ours: bool) -> dict:
    """Fastest vitkit row (``ours``) or fastest peer row."""
    return max((r for r in rows if r["contender"].startswith("vitkit") == ours), key=lambda r: r["images_per_s"])


def inference_table(res: dict) -> list[str]:
    lines = ["| model | batch | contender | images/s | latency ms | share of bf16 GEMM | peak RSS rise MiB "
             "| weights MiB | max rel. Δlogits vs fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    gemm = {(r["model"], r["batch"]): r["bf16_gemm_gflop_per_s"] for r in res["inference"]}
    notes = ["bf16 GEMM in the same round-robin: " + ", ".join(f"{m} b{b}: {g:.0f} GFLOP/s" for (m, b), g in gemm.items())]
    for r in res["inference"]:
        delta = "" if r["max_rel_logit_delta_vs_fp32"] is None else f"{r['max_rel_logit_delta_vs_fp32']:.1e}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['contender']} | {r['images_per_s']:.2f} "
                     f"| {r['latency_ms']:.1f} | {r['share_of_bf16_gemm']:.0%} | {r['peak_rss_rise_mb']:.0f} "
                     f"| {r['weights_mb']:.0f} | {delta} |")
    return notes + [""] + lines


def training_table(res: dict) -> list[str]:
    lines = ["| contender | images/s | ms/step | peak RSS rise MiB |", "|---|---|---|---|"]
    lines += [f"| {r['contender']} | {r['images_per_s']:.1f} | {r['step_ms']:.0f} | {r['peak_rss_rise_mb']:.0f} |"
              for r in res["training"]]
    return lines


def targets(res: dict) -> list[str]:
    out = []
    for model in sorted({r["model"] for r in res["inference"]}):
        for batch in (1, 32):
            rows = [r for r in res["inference"] if r["model"] == model and r["batch"] == batch]
            ours, peer = _best(rows, True), _best(rows, False)
            ratio = ours["images_per_s"] / peer["images_per_s"]
            autocast = max((r for r in rows if not r["contender"].startswith("vitkit") and "autocast" in r["contender"]),
                           key=lambda r: r["images_per_s"])
            line = (f"- {model} batch {batch}: vitkit best `{ours['contender']}` {ours['images_per_s']:.2f} img/s vs "
                    f"best peer `{peer['contender']}` {peer['images_per_s']:.2f}: **{ratio:.2f}x** (vs the best peer "
                    f"under bf16 autocast, `{autocast['contender']}`: {ours['images_per_s'] / autocast['images_per_s']:.2f}x)")
            if batch == 32:
                alone = max(res["gemm_start"]["bf16"], res["gemm_end"]["bf16"])
                line += (f"; {ours['share_of_bf16_gemm']:.0%} of the bf16 GEMM timed in the same round-robin, "
                         f"{ours['gflop_per_s'] / alone:.0%} of the best bf16 GEMM timed alone")
            out.append(line)
    if res["training"]:
        ours, peer = _best(res["training"], True), _best(res["training"], False)
        out.append(f"- training vit_mini_patch4_28 batch 256: vitkit best `{ours['contender']}` "
                   f"{ours['images_per_s']:.0f} img/s vs best peer `{peer['contender']}` {peer['images_per_s']:.0f}: "
                   f"**{ours['images_per_s'] / peer['images_per_s']:.2f}x**")
    return out


def main() -> None:
    res = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu.json").read_text())
    g0, g1 = res["gemm_start"], res["gemm_end"]
    print(f"torch {res['torch']}, {res['threads']} threads; GEMM alone at start/end: {g0['fp32']:.0f}/{g1['fp32']:.0f} "
          f"GFLOP/s fp32, {g0['bf16']:.0f}/{g1['bf16']:.0f} bf16; "
          f"load average {res['load_avg_start'][0]:.1f} -> {res['load_avg_end'][0]:.1f}; {res['seconds']:.0f} s\n")
    print("\n".join(inference_table(res) + [""] + training_table(res) + [""] + targets(res)))


if __name__ == "__main__":
    main()
