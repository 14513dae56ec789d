"""The HTTP API of `vitkit serve`, an ASGI app (FastAPI): routes, uploads, answers.

    GET  /          a page: drop images on it, see the top classes
    GET  /health    {"status": "ok"}
    GET  /info      the checkpoint: classes, input size, runtime
    GET  /metrics   Prometheus metrics (serve/metrics.py)
    GET  /docs      the API's OpenAPI documentation
    POST /predict   the request body is one image file, any format and mode Pillow reads
                    (``curl --data-binary @cat.jpg``), or a form holding one (``curl -F file=@cat.jpg``);
                    ``?topk=K&name=cat.jpg`` optional
                    -> {"name", "topk": [{"class", "prob"}, ...], "ms", "batch"}; ``&explain=1`` adds
                    "explanation": the /explain PNG as a data: URL (one upload for both)
                    a bad image -> 400 {"error": "cat.jpg: unreadable image data ..."}
    POST /explain   the same body -> a PNG: the image and its attention-rollout overlay

Uploads are decoded on a pool of threads and classified in batches (serve/batching.py). Every
error is JSON ``{"error": "one line"}``.
"""
from __future__ import annotations

import asyncio
import base64
import email.policy
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..errors import VitkitError
from .batching import Batcher, QueueFull
from .metrics import Metrics, MetricsMiddleware
from .page import PAGE
from .predictor import Predictor

log = logging.getLogger("vitkit.serve")

MAX_BODY_BYTES = 32 * 2**20
"""Bigger uploads are refused (413)."""
DRAIN_BYTES = 64 * 2**20
"""An upload over the limit is still read (and dropped) up to this size, so its client gets the 413
instead of a connection reset; a bigger one is answered at once and its connection closed."""


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts; `vitkit serve`'s flags."""
    max_body: int = MAX_BODY_BYTES
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    body_timeout: float = 10.0
    decode_threads: int = 2


class ApiError(Exception):
    """An answer other than 200: its status, one line for the user, and whether to close the connection."""

    def __init__(self, status: int, message: str, kind: str = "bad_upload", close: bool = False,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.close = status, message, kind, close
        self.headers = headers or {}


def create_app(predictor: Predictor, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The ASGI app for ``predictor``; its batcher and decode threads start and stop with the app."""
    metrics = Metrics()
    batcher = Batcher(predictor.classify, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                      on_batch=metrics.observe_batch)
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="vitkit-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()
        decoders.shutdown(wait=False)

    app = FastAPI(title="vitkit serve", version="1", lifespan=lifespan,
                  description="Image classification with a vitkit checkpoint; errors are {\"error\": \"...\"}.")
    app.state.predictor, app.state.batcher, app.state.metrics = predictor, batcher, metrics

    async def decode(data: bytes, name: str):
        return await asyncio.get_running_loop().run_in_executor(decoders, predictor.decode, data, name)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        metrics.errors.labels(e.kind).inc()
        headers = {**e.headers, **({"Connection": "close"} if e.close else {})}
        return _json({"error": e.message}, e.status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        if e.status_code == 404:
            message = f"{request.url.path}: no such endpoint (GET /, /health, /info, /metrics, /docs; POST /predict, /explain)"
        else:
            message = str(e.detail)
        return _json({"error": message}, e.status_code, dict(e.headers or {}))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> Response:  # a bug: an answer, not a dropped connection
        log.exception("internal error")
        metrics.errors.labels("internal").inc()
        return _json({"error": f"{request.query_params.get('name', 'upload')}: internal error "
                               f"({type(e).__name__}: {e})"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health", summary="Liveness: {\"status\": \"ok\"}")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/info", summary="The checkpoint: classes, input size, runtime, whether /explain works")
    async def info() -> Response:
        return _json(predictor.about)

    @app.get("/metrics", summary="Prometheus metrics: requests, latency, batch sizes, errors")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    image_body = {"requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/predict", openapi_extra=image_body,
                   summary="The image's top classes (the body is the image file, or a form holding it)")
    async def predict(request: Request, name: str | None = None, topk: str | None = None,
                      explain: str | None = None) -> Response:
        start = time.perf_counter()
        k = _topk(topk, predictor.topk)
        want_explain = (explain or "0").lower() in ("1", "true", "yes")
        if want_explain and predictor.model is None:
            raise ApiError(400, "this checkpoint has no attention layers to explain (a CNN?)")
        name, data = await _upload(request, name, settings)
        batcher.incoming += 1  # an image on its way (a body still arriving, maybe never, is not counted)
        try:
            image = await _decoded(decode, data, name)
        finally:
            batcher.incoming -= 1
        try:
            top = await batcher.submit(image, k)
        except QueueFull:
            raise ApiError(503, "the server is busy (its queue is full); try again shortly", "queue_full",
                           headers={"Retry-After": "1"}) from None
        out: dict[str, Any] = {"name": name, "topk": [{"class": c, "prob": p} for c, p in top],
                               "ms": round(1e3 * (time.perf_counter() - start), 2)}
        if want_explain:
            png = await batcher.call(predictor.explain_png, image)
            out["explanation"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return _json(out)

    @app.post("/explain", openapi_extra=image_body,
                   response_class=Response, responses={200: {"content": {"image/png": {}}}},
                   summary="A PNG: the image beside its attention-rollout overlay")
    async def explain(request: Request, name: str | None = None) -> Response:
        if predictor.model is None:
            raise ApiError(400, "this checkpoint has no attention layers to explain (a CNN?)")
        name, data = await _upload(request, name, settings)
        image = await _decoded(decode, data, name)
        return Response(await batcher.call(predictor.explain_png, image), media_type="image/png")

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # health checks
    for path, route in (("/predict", predict), ("/explain", explain)):
        app.add_api_route(path, route, methods=["PUT"], include_in_schema=False)  # curl -T image.jpg
        app.add_api_route(path, _post_only(path), methods=["GET"], include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _json(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, headers, media_type="application/json")


def _post_only(path: str):
    async def post_only() -> Response:
        raise ApiError(405, f"{path} takes POST with an image file as the body", "bad_request",
                       headers={"Allow": "POST, PUT"})
    return post_only


def _topk(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise ApiError(400, f"topk must be a positive integer, got {value!r}", "bad_request")
    return int(value)


async def _decoded(decode, data: bytes, name: str):
    try:
        return await decode(data, name)
    except VitkitError as e:
        raise ApiError(400, str(e)) from None


async def _upload(request: Request, name: str | None, settings: ServeSettings) -> tuple[str, bytes]:
    """The uploaded file's name and bytes: the body itself, or the file in a multipart form."""
    data = await read_body(request, name or "upload", settings.max_body, settings.body_timeout)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data":
        try:
            form_name, data = form_file(request.headers["content-type"], data)
        except VitkitError as e:
            raise ApiError(400, str(e), "bad_request") from None
        name = name or form_name
    return name or "upload", data


async def read_body(request: Request, name: str, max_body: int, timeout: float) -> bytes:
    """The request body, read within ``timeout`` seconds (a client that stops sending is answered 408 and
    dropped); over ``max_body`` bytes a 413, after reading and dropping the rest up to ``DRAIN_BYTES``."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > DRAIN_BYTES:
        raise ApiError(413, f"{name}: {int(length):,} bytes is over the limit of {max_body:,}", "too_large",
                       close=True)
    chunks, size = [], 0
    try:
        async with _deadline(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= max_body:
                    chunks.append(chunk)
                elif size > DRAIN_BYTES:
                    break
    except ClientDisconnect:  # it left mid-upload: nobody reads the answer, but it is counted
        raise ApiError(400, f"{name}: the client closed the connection mid-upload", "disconnected",
                       close=True) from None
    except asyncio.TimeoutError:
        raise ApiError(408, f"{name}: the upload did not arrive within {timeout:g} s", "timeout",
                       close=True) from None
    if size > max_body:
        raise ApiError(413, f"{name}: {size:,} bytes is over the limit of {max_body:,}", "too_large",
                       close=size > DRAIN_BYTES)
    return b"".join(chunks)


def _deadline(seconds: float):
    """``asyncio.timeout`` (Python 3.11+), or a stand-in that cancels the task after ``seconds``."""
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    return _Deadline(seconds)


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False

    async def __aenter__(self):
        task = asyncio.current_task()
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._expire, task)
        return self

    def _expire(self, task: asyncio.Task) -> None:
        self.expired = True
        task.cancel()

    async def __aexit__(self, kind, value, traceback) -> bool:
        self.handle.cancel()
        if self.expired and kind is asyncio.CancelledError:
            raise asyncio.TimeoutError
        return False


def form_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """The first file of a multipart/form-data body, and its file name."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_filename() is not None or part.get_content_maintype() == "image":
            return part.get_filename() or "upload", part.get_payload(decode=True) or b""
    raise VitkitError("the form holds no file: send one as a file field (curl -F file=@image.jpg), or the "
                      "image itself as the request body (curl --data-binary @image.jpg)")
