"""Prometheus metrics of `vitkit serve` (GET /metrics): requests, latency, batch sizes, errors.

Each app has a registry of its own, so tests (and several apps in one process) do not collide in
prometheus-client's global one. With ``--workers N`` the workers are separate processes: when
``PROMETHEUS_MULTIPROC_DIR`` is set (``vitkit serve`` sets it for N > 1), /metrics sums all of them
(prometheus-client's multiprocess mode).
"""
from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

ROUTES = frozenset({"/", "/health", "/info", "/predict", "/explain", "/metrics", "/docs", "/openapi.json"})
"""Paths counted under their own name; anything else is counted as "other" (labels stay few)."""
LATENCY_BUCKETS = (.002, .005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Metrics:
    """The counters and histograms of one app, and the text /metrics answers with."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        kw = {"registry": self.registry}
        self.requests = Counter("vitkit_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], **kw)
        self.latency = Histogram("vitkit_request_seconds", "Time from a request's headers to its answer",
                                 ["route"], buckets=LATENCY_BUCKETS, **kw)
        self.batch_size = Histogram("vitkit_batch_size", "Images per forward pass of the model",
                                    buckets=BATCH_BUCKETS, **kw)
        self.batch_seconds = Histogram("vitkit_batch_seconds", "Time of each batch's forward pass",
                                       buckets=LATENCY_BUCKETS, **kw)
        self.errors = Counter("vitkit_errors", "Requests refused or failed, by kind (bad_upload, too_large, "
                              "timeout, disconnected, queue_full, internal)", ["kind"], **kw)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type; all workers' sums in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by route and status and times it (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
