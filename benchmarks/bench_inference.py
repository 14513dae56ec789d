"""Inference and training speed of vitkit vs HF transformers and vit-pytorch, in one process.

    python benchmarks/bench_inference.py --quick   # about half the full run (6.5 min on the Xeon, 17 on the AMD EPYC)
    python benchmarks/report.py benchmarks/results/cpu_quick.json

The machine may be shared, so every contender is timed round-robin (one call each, then
again, ``reps`` times) and the median is kept: a burst of load hits all contenders alike.
The bf16 GEMM rate that figures are a share of is a 2048^3 bf16 matmul timed as one more
contender in the same round-robin (so it sees the same load); fp32/bf16 GEMM rates are
also measured alone at the start and the end of the run. Peak memory is the rise of the
process RSS (/proc/self/statm, sampled every ms by a thread) during one call after
``malloc_trim``; weights are listed separately (they are resident before the call).
Results go to benchmarks/results/<name>.json; ``--table`` prints the README table.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from peers import lucidrains_vit, hf_vit, peers  # noqa: E402

from vitkit.allocator import keep_freed_memory  # noqa: E402
from vitkit.inference import prepare_for_inference  # noqa: E402
from vitkit.models import create_model  # noqa: E402
from vitkit.train.fp32_linear import onednn_pays_off, use_onednn_linears  # noqa: E402
from vitkit.machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ARCHS = {  # registry name -> architecture as the peers take it
    "vit_small_patch16_224": dict(img_size=224, patch=16, in_chans=3, dim=384, depth=12, heads=6, mlp_ratio=4.0,
                                  num_classes=1000),
    "vit_base_patch16_224": dict(img_size=224, patch=16, in_chans=3, dim=768, depth=12, heads=12, mlp_ratio=4.0,
                                 num_classes=1000),
}
TRAIN_ARCH = dict(img_size=28, patch=4, in_chans=1, dim=128, depth=6, heads=4, mlp_ratio=2.0, num_classes=10)


def gflop_per_image(a: dict) -> float:
    """2 x multiply-accumulates of patch embedding, blocks (linears + QK^T + AV) and head (ViT-B/16: 35.13)."""
    n_patch = (a["img_size"] // a["patch"]) ** 2
    n, d, h = n_patch + 1, a["dim"], int(a["dim"] * a["mlp_ratio"])
    macs = n_patch * a["in_chans"] * a["patch"] ** 2 * d + a["depth"] * (n * (4 * d * d + 2 * d * h) + 2 * n * n * d)
    return 2 * (macs + d * a["num_classes"]) / 1e9


GEMM_N = 2048


def gemm_call(dtype: torch.dtype, n: int = GEMM_N) -> Callable[[], torch.Tensor]:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return lambda: a @ b


def gemm_rates(reps: int = 5) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul in fp32 and bf16 (median of ``reps``)."""
    return {name: 2 * GEMM_N ** 3 / median_seconds(gemm_call(dtype), reps) / 1e9
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_robin(contenders: dict[str, Callable[[], object]], reps: int, calls: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, timed alternately; ``calls`` per sample for short calls."""
    for fn in contenders.values():
        fn()  # warm-up: first-call allocations, oneDNN primitive creation
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_rise_mb(fn: Callable[[], object]) -> float:
    """Highest RSS above the starting RSS while ``fn`` runs, in MiB (allocator caches trimmed first)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    done.set()
    thread.join()
    return max(peak[0], _rss()) / 2 ** 20 - base / 2 ** 20


def weight_mb(model: nn.Module) -> float:
    """Parameters and buffers, plus the packed int8 weights of quantized Linears (neither of those)."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [m.weight() for m in model.modules() if callable(getattr(m, "weight", None))]
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


class Bf16Weights(nn.Module):
    """A peer's best-effort bf16: cast weights once, cast inputs in and logits out (what vitkit's bf16 does)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16)).float()


def inference_contenders(name: str, quick: bool) -> dict[str, nn.Module | Callable]:
    """(library, mode) -> callable taking float32 images; every one under inference_mode by the caller."""
    torch.manual_seed(0)
    ours = create_model(name).eval()
    out: dict[str, Callable] = {f"vitkit {p}": prepare_for_inference(ours, p) for p in ("fp32", "bf16", "int8")}
    out["vitkit bf16-autocast"] = autocast(ours)
    for peer, model in peers(**ARCHS[name]).items():
        if not quick:
            out[f"{peer} fp32"] = model
        out[f"{peer} bf16-autocast"] = autocast(model)
        out[f"{peer} bf16-weights"] = Bf16Weights(model)
        if not quick:  # what a user of the library would do for int8: torch's dynamic quantization, as is
            out[f"{peer} int8"] = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return out


def autocast(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()
    run.model = model
    return run


def bench_inference(quick: bool) -> list[dict]:
    rows = []
    reps = 3 if quick else 5
    for name, arch in ARCHS.items():
        contenders = inference_contenders(name, quick)
        flop = gflop_per_image(arch)
        for batch in (1, 32):
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                ref = contenders["vitkit fp32"](x)
                calls = {k: (lambda f=f: f(x)) for k, f in contenders.items()}
                secs = round_robin({**calls, "gemm": gemm_call(torch.bfloat16)}, reps, calls=4 if batch == 1 else 1)
                gemm_bf16 = 2 * GEMM_N ** 3 / secs.pop("gemm") / 1e9
                mem = {k: peak_rss_rise_mb(f) for k, f in calls.items()}
                deltas = {k: (contenders[k](x) - ref).abs().max().item() / ref.abs().max().item()
                          for k in contenders if k.startswith("vitkit")}
            for k, s in secs.items():
                model = getattr(contenders[k], "model", contenders[k])
                rows.append(dict(model=name, batch=batch, contender=k, latency_ms=1e3 * s, images_per_s=batch / s,
                                 gflop_per_s=batch * flop / s, bf16_gemm_gflop_per_s=gemm_bf16,
                                 share_of_bf16_gemm=batch * flop / s / gemm_bf16,
                                 peak_rss_rise_mb=mem[k], weights_mb=weight_mb(model),
                                 max_rel_logit_delta_vs_fp32=deltas.get(k)))
                print(f"{name} b{batch} {k:26s} {batch / s:7.2f} img/s {1e3 * s:8.1f} ms "
                      f"{batch * flop / s / gemm_bf16:6.1%} of bf16 GEMM  +{mem[k]:.0f} MiB", flush=True)
    return rows


def train_contenders(quick: bool) -> dict[str, tuple[nn.Module, bool]]:
    """(library, mode) -> (model in train mode, bf16?); without --quick each library's bf16 model
    is also timed under torch.compile (its best mode may be compiled)."""
    torch.manual_seed(0)
    models = {"vitkit": create_model("vit_mini_patch4_28"),
              "hf-sdpa": hf_vit(**TRAIN_ARCH, attn="sdpa"), "hf-eager": hf_vit(**TRAIN_ARCH, attn="eager"),
              "vit-pytorch": lucidrains_vit(**TRAIN_ARCH)}
    out = {f"{k} {p}": (copy.deepcopy(m).train(), p == "bf16") for k, m in models.items() for p in ("fp32", "bf16")}
    if onednn_pays_off():  # what the trainer does in fp32 on this CPU; the plain model stays, for reference
        out["vitkit fp32-mkl"] = out["vitkit fp32"]
        fast = copy.deepcopy(models["vitkit"]).train()
        use_onednn_linears(fast)
        out["vitkit fp32"] = (fast, False)
    if not quick:
        out.update({f"{k} bf16-compiled": (torch.compile(copy.deepcopy(models[k]).train()), True)
                    for k in ("vitkit", "hf-eager", "vit-pytorch")})
    return out


def bench_training(quick: bool, batch: int = 256) -> list[dict]:
    """One full optimizer step (forward, loss, backward, fused AdamW: the same optimizer for all)."""
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    steps = {}
    for name, (model, bf16) in train_contenders(quick).items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(model=model, opt=opt, bf16=bf16) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        steps[name] = step
    secs = round_robin(steps, reps=4 if quick else 8, calls=2)
    mem = {k: peak_rss_rise_mb(f) for k, f in steps.items()}
    rows = []
    for k, s in secs.items():
        rows.append(dict(model="vit_mini_patch4_28", batch=batch, contender=k, step_ms=1e3 * s,
                         images_per_s=batch / s, peak_rss_rise_mb=mem[k]))
        print(f"train b{batch} {k:22s} {batch / s:7.1f} img/s {1e3 * s:7.1f} ms/step +{mem[k]:.0f} MiB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats; peers without fp32 and int8, no compiled training")
    ap.add_argument("--part", choices=("all", "inference", "training"), default="all")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    ap.add_argument("--out", default=None, help="results file name (default: cpu_quick.json / cpu.json)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="raise glibc's malloc thresholds first, as `vitkit train` does (process-wide: every contender)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    started = time.time()
    gemm_start = gemm_rates()
    print(f"GEMM at start: {gemm_start['fp32']:.0f} GFLOP/s fp32, {gemm_start['bf16']:.0f} bf16", flush=True)
    result: dict = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_name(),
                        load_avg_start=os.getloadavg(), quick=args.quick,
                        keep_freed_memory=kept)
    inference = bench_inference(args.quick) if args.part in ("all", "inference") else []
    training = bench_training(args.quick) if args.part in ("all", "training") else []
    gemm_end = gemm_rates()
    result.update(gemm_start=gemm_start, gemm_end=gemm_end, load_avg_end=os.getloadavg(),
                  seconds=time.time() - started, inference=inference, training=training)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (args.out or ("cpu_quick.json" if args.quick else "cpu.json"))
    path.write_text(json.dumps(result, indent=1))
    print(f"GEMM at end: {gemm_end['fp32']:.0f} fp32, {gemm_end['bf16']:.0f} bf16; "
          f"{result['seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
