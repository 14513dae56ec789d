"""Dynamic batching: concurrent requests share one forward pass.

A CPU classifies 20-30x more images per second in a batch than one at a time, so requests are not
run as they come: each decoded image waits in a bounded queue, and one model thread takes up to
``max_batch`` of them at once. The first image of a batch waits at most ``max_wait_ms`` for others
to join, and only while other uploads are being decoded (with no one else on the way, the wait would
only add latency); while the model is busy, the images that arrive meanwhile form the next batch at once.
Past ``max_queue`` waiting images a request is refused (:class:`QueueFull`, a 503) rather than
queued behind more work than the server can do in a reasonable time.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")
RunBatch = Callable[[torch.Tensor, list[int]], list[Any]]


class QueueFull(Exception):
    """The batcher already holds ``max_queue`` images: the caller should answer 503."""


@dataclass
class _Job:
    image: torch.Tensor
    topk: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Runs ``run_batch(images [B, C, H, W], topks)`` on a thread of its own, for batches of queued images.

    ``on_batch(size, seconds)`` is told of each forward pass (the metrics). Work that cannot be
    batched (/explain) goes through :meth:`call`, on the same thread, so the model never runs twice at once.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be positive, max_wait_ms not negative")
        self.run_batch, self.max_batch, self.max_queue = run_batch, max_batch, max_queue
        self.max_wait = max_wait_ms / 1e3
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.incoming = 0
        """Uploads being decoded, which will be submitted soon (the app counts them)."""
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vitkit-model")

    async def start(self) -> None:
        """Start taking batches; call it from the event loop that will submit."""
        self._queue, self._arrived = asyncio.Queue(self.max_queue), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Images queued and not yet in a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, image: torch.Tensor, topk: int) -> Any:
        """``run_batch``'s answer for this one image, once its batch has run; QueueFull at once when full."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(image, topk, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} images are already waiting") from None
        self._arrived.set()
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the model's thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            batch = [job for job in batch if not job.future.done()]  # a client that left is not run
            if not batch:
                continue
            start = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self._thread, self.run_batch,
                                                     torch.stack([job.image for job in batch]),
                                                     [job.topk for job in batch])
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)
            for job, answer in zip(batch, answers):
                if not job.future.done():
                    job.future.set_result(answer)

    async def _take(self) -> list[_Job]:
        """Up to ``max_batch`` jobs: what is queued now, then what arrives until the first one has
        waited ``max_wait``."""
        queue = self._queue
        batch = [await queue.get()]
        deadline = batch[0].enqueued + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self.incoming == 0:  # no one else is on the way: waiting would only add latency
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch
