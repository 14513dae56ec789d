"""Load test of `vitkit serve` (issue 34): throughput and latency from 1 to 64 concurrent clients.

    python benchmarks/serve_load.py                      # demo model, every level, stalled clients, ViT-B/16 int8
    python benchmarks/serve_load.py --soak-seconds 600   # also a soak at 32 clients, bad uploads mixed in

The server is `vitkit serve` in a process of its own (as deployed), on a freshly initialised demo model
(recipes/demo.yaml's architecture: the weights do not change the speed) saved to a temporary run folder.
The load generator is one asyncio process speaking HTTP/1.1 on raw sockets (keep-alive, one connection
per client), only to 127.0.0.1, bounded in requests and seconds per level; each request is a different
28 x 28 PNG. Server and generator share the machine's cores, as the issue's ceiling assumes.
Results go to benchmarks/results/serve_load.json, with the CPU's name.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.fileio import atomic_write
from vitkit.machine import cpu_name

RESULTS = Path(__file__).parent / "results"
DEMO = dict(name="sl_vit_mini_patch4_28", kwargs=dict(class_token=False, global_pool="avg", pos_embed="sincos"),
            img_size=28, in_chans=1, classes=10)
VIT_B = dict(name="vit_base_patch16_224", kwargs={}, img_size=224, in_chans=3, classes=1000)
BAD_UPLOADS = [(b"/predict?name=x.png", b"GIF89a but not really"), (b"/predict?topk=abc", b"\x89PNG"),
               (b"/predict?name=cut.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0")]


def save_model(spec: dict, folder: Path) -> Path:
    """A freshly initialised model saved as a vitkit run folder (what `vitkit serve --checkpoint` loads)."""
    import vitkit
    from vitkit.train import save_checkpoint

    model = vitkit.create_model(spec["name"], num_classes=spec["classes"], **spec["kwargs"])
    meta = dict(classes=[f"class{i}" for i in range(spec["classes"])], img_size=spec["img_size"],
                in_chans=spec["in_chans"], mean=[0.5] * spec["in_chans"], std=[0.25] * spec["in_chans"])
    save_checkpoint(folder, model, meta)
    return folder


def pngs(count: int, size: int, chans: int, seed: int = 0) -> list[bytes]:
    """``count`` different images (smooth gradients plus noise, like photos compress)."""
    rng = np.random.default_rng(seed)
    out = []
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    for i in range(count):
        base = ramp[None, :] * rng.random() + ramp[:, None] * rng.random()
        pixels = np.clip(base[..., None] + rng.normal(0, 20, (size, size, chans)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels[..., 0] if chans == 1 else pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """`vitkit serve` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, checkpoint: Path, precision: str, *flags: str):
        cmd = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", "0",
               "--precision", precision, *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"vitkit serve did not start: {line}{self.proc.stderr.read()}")
        self.port = int(match[1])
        self.log: list[str] = []  # what it says later (read, or a full pipe would block its writes)
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, MB."""
        pids = [self.proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                                                                  capture_output=True, text=True).stdout.split()]
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += int(re.search(r"VmRSS:\s+(\d+)", status)[1])
        return total / 1024

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def request(reader, writer, target: bytes, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
                 % (target, len(body)) + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
    return status, await reader.readexactly(length)


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


def batch_stats(metrics: bytes) -> tuple[float, float, float]:
    """Images run, forward passes, and seconds spent in them, so far (from /metrics)."""
    text = metrics.decode()
    value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M)[1])  # noqa: E731
    return value("vitkit_batch_size_sum"), value("vitkit_batch_size_count"), value("vitkit_batch_seconds_sum")


async def load(port: int, clients: int, images: list[bytes], max_requests: int, max_seconds: float,
               bad_every: int = 0, on_tick=None) -> dict:
    """``clients`` connections sending requests back to back until ``max_requests`` or ``max_seconds``."""
    latencies, failures, statuses = [], [], {}
    issued = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    before = batch_stats(await get(port, "/metrics"))

    async def client() -> None:
        nonlocal issued
        reader = writer = None
        while issued < max_requests and time.perf_counter() < deadline:
            n = issued
            issued += 1
            bad = bad_every and n % bad_every == bad_every - 1
            target, body = BAD_UPLOADS[n % len(BAD_UPLOADS)] if bad else (b"/predict", images[n % len(images)])
            t = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                status, _ = await request(reader, writer, target, body)
            except (OSError, asyncio.IncompleteReadError) as e:
                failures.append(type(e).__name__)
                writer = None
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if bad:
                if status != 400:
                    failures.append(f"bad upload got {status}")
            elif status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                failures.append(f"HTTP {status}")
        if writer is not None:
            writer.close()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(10)
            on_tick(time.perf_counter() - start)

    tick = asyncio.create_task(ticker()) if on_tick else None
    await asyncio.gather(*(client() for _ in range(clients)))
    if tick:
        tick.cancel()
    seconds = time.perf_counter() - start
    after = batch_stats(await get(port, "/metrics"))
    ms = sorted(1e3 * x for x in latencies)
    pct = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None  # noqa: E731
    return dict(clients=clients, requests=issued, ok=len(latencies), failed=len(failures),
                failures=sorted(set(failures))[:5], statuses={str(k): v for k, v in statuses.items()},
                seconds=round(seconds, 2), req_per_s=round(len(latencies) / seconds, 1),
                p50_ms=pct(0.5), p90_ms=pct(0.9), p99_ms=pct(0.99), max_ms=round(ms[-1], 1) if ms else None,
                mean_ms=round(statistics.fmean(ms), 1) if ms else None,
                mean_batch=round((after[0] - before[0]) / max(1, after[1] - before[1]), 1),
                model_busy=round((after[2] - before[2]) / seconds, 2))  # share of the time the model ran


class StalledClients:
    """``count`` connections that send a valid POST head and a few body bytes, then nothing; each one the
    server drops (its body timeout) is opened again, so ``count`` stay open throughout."""

    def __init__(self, port: int, count: int):
        self.port, self.count, self.reopened = port, count, 0
        self.tasks: list[asyncio.Task] = []

    async def _one(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n\x89PNG")
                await reader.read()  # until the server gives up on us
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)
            self.reopened += 1

    async def __aenter__(self):
        self.tasks = [asyncio.create_task(self._one()) for _ in range(self.count)]
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def offline_rate(checkpoint: Path, precision: str, batch: int = 32, seconds: float = 20.0) -> float:
    """Images/s of the prepared model alone at ``batch`` (no server, no decoding): the issue's reference."""
    import torch

    from vitkit.inference.predict import load_classifier

    classifier, config, _ = load_classifier(checkpoint, precision)
    x = torch.randn(batch, config["in_chans"], config["img_size"], config["img_size"])
    classifier(x)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        classifier(x)
        runs += 1
    return batch * runs / (time.perf_counter() - start)


async def demo_rows(server: Server, args, images: list[bytes]) -> dict:
    await load(server.port, 8, images, 200, 20)  # warm-up: thread pools, allocator, kernels per batch size
    rows = []
    for clients in args.levels:
        row = await load(server.port, clients, images, args.requests, args.level_seconds)
        rows.append(row)
        print(f"  {clients:3d} clients: {row['req_per_s']:7.1f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"failed {row['failed']}, mean batch {row['mean_batch']}, model busy {row['model_busy']:.0%}", flush=True)
    async with StalledClients(server.port, args.stalled) as stalled:
        row = await load(server.port, 64, images, args.requests, args.level_seconds)
        row.update(stalled_clients=args.stalled, stalled_reopened=stalled.reopened)
    print(f"   64 clients + {args.stalled} stalled: {row['req_per_s']} req/s, p99 {row['p99_ms']} ms, "
          f"failed {row['failed']}", flush=True)
    return dict(levels=rows, with_stalled_clients=row)


async def soak(server: Server, args, images: list[bytes]) -> dict:
    samples = [(0.0, server.rss_mb())]

    def tick(t: float) -> None:
        samples.append((round(t, 1), round(server.rss_mb(), 1)))
        print(f"  soak {t:5.0f} s: RSS {samples[-1][1]:.1f} MB", flush=True)

    row = await load(server.port, 32, images, 10**9, args.soak_seconds, bad_every=10, on_tick=tick)
    first = samples[1][1] if len(samples) > 1 else samples[0][1]  # after 10 s: warmed up
    row.update(rss_mb=samples, rss_growth_pct=round(100 * (samples[-1][1] / first - 1), 1))
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,2,4,8,16,32,64", help="concurrent clients, comma-separated")
    ap.add_argument("--requests", type=int, default=3000, help="requests per level (at most)")
    ap.add_argument("--level-seconds", type=float, default=10.0, help="seconds per level (at most)")
    ap.add_argument("--stalled", type=int, default=40, help="stalled clients during the 64-client run")
    ap.add_argument("--soak-seconds", type=float, default=0, help="a soak at 32 clients (0: none)")
    ap.add_argument("--workers", default="1,2", help="--workers values to compare at 32 clients")
    ap.add_argument("--precision", default="bf16", help="the demo model's --precision")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--no-vit-base", action="store_true", help="skip the ViT-B/16 int8 row")
    ap.add_argument("--out", default="serve_load.json")
    args = ap.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    gc.disable()  # the generator's own pauses would count as the server's latency
    try:
        import uvloop
        uvloop.install()  # the generator's own overhead, kept small
    except ImportError:
        pass
    result: dict = dict(cpu=cpu_name(), cores=os.cpu_count(), load_avg_start=os.getloadavg(),
                        settings=dict(precision=args.precision, max_batch=args.max_batch,
                                      max_wait_ms=args.max_wait_ms, requests_per_level=args.requests,
                                      level_seconds=args.level_seconds))
    flags = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    images = pngs(max(args.requests, 2000), 28, 1)
    with tempfile.TemporaryDirectory() as tmp:
        demo = save_model(DEMO, Path(tmp) / "demo")
        result["offline_batch32_img_per_s"] = round(offline_rate(demo, args.precision, seconds=5), 1)
        for workers in [int(w) for w in args.workers.split(",")]:
            print(f"demo model ({args.precision}), --workers {workers}:", flush=True)
            server = Server(demo, args.precision, "--workers", str(workers), *flags)
            try:
                if workers == 1:
                    result["demo"] = asyncio.run(demo_rows(server, args, images))
                    if args.soak_seconds:
                        result["soak"] = asyncio.run(soak(server, args, images))
                else:
                    asyncio.run(load(server.port, 8, images, 200, 20))
                    row = asyncio.run(load(server.port, 32, images, args.requests, args.level_seconds))
                    print(f"   32 clients: {row['req_per_s']} req/s, p99 {row['p99_ms']} ms", flush=True)
                    result.setdefault("workers", {})[str(workers)] = row
            finally:
                server.stop()
                result.setdefault("server_log", []).extend(server.log[-20:])
        if "demo" in result:
            result.setdefault("workers", {})["1"] = next(r for r in result["demo"]["levels"] if r["clients"] == 32) \
                if 32 in args.levels else None
        if not args.no_vit_base:
            vit = save_model(VIT_B, Path(tmp) / "vit-b16")
            offline = offline_rate(vit, "int8", seconds=20)
            print(f"ViT-B/16 int8: offline batch 32 {offline:.1f} img/s", flush=True)
            server = Server(vit, "int8", *flags)
            try:
                big = pngs(96, 224, 3, seed=1)
                asyncio.run(load(server.port, 32, big, 32, 60))
                row = asyncio.run(load(server.port, 32, big, 96, 120))
            finally:
                server.stop()
            row.update(offline_batch32_img_per_s=round(offline, 1),
                       share_of_offline=round(row["req_per_s"] / offline, 2))
            result["vit_base_int8"] = row
            print(f"   32 clients: {row['req_per_s']} req/s = {row['share_of_offline']:.0%} of offline", flush=True)
    result["load_avg_end"] = os.getloadavg()
    path = RESULTS / args.out
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
