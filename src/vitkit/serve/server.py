"""`vitkit serve`: an HTTP API over a checkpoint, on the standard library's server.

    GET  /          a page: drop images on it, see the top classes
    GET  /health    {"status": "ok"}
    GET  /info      the checkpoint: classes, input size, runtime
    POST /predict   the request body is one image file, any format and mode Pillow reads
                    (``curl --data-binary @cat.jpg``), or a form holding one (``curl -F file=@cat.jpg``);
                    ``?topk=K&name=cat.jpg`` optional
                    -> {"name", "topk": [{"class", "prob"}, ...], "ms"}; ``&explain=1`` adds
                    "explanation": the /explain PNG as a data: URL (one upload for both)
                    a bad image -> 400 {"error": "cat.jpg: unreadable image data ..."}
    POST /explain   the same body -> a PNG: the image and its attention-rollout overlay

At most ``MAX_CONNECTIONS`` connections are served at once (more get 503). Requests are answered
one at a time, decoding included: on a CPU one image already keeps every core busy, and a small file
can decode to gigabytes, so running two at once would only make both slower and the peak memory larger.
"""
from __future__ import annotations

import base64
import email.policy
import io
import json
import queue
import selectors
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import EvalResize, normalize, resized_from_bytes
from ..errors import VitkitError
from ..explain import attention_rollout
from ..explain.figures import rollout_strip
from ..explain.tokens import attention_modules
from ..inference.predict import Classifier, top_classes
from .page import PAGE

MAX_BODY_BYTES = 32 * 2**20
"""Bigger uploads are refused (413) before they are read."""
MAX_CONNECTIONS = 32
"""Open connections served at once; more get 503 (see ``_Server``)."""
MAX_REFUSED = 64
"""Refused connections still being read (their uploads dropped) at once; more are closed at once."""


class Predictor:
    """A classifier, its checkpoint's config and a lock: what every request shares.

    ``model``, the checkpoint's plain model, enables /explain (attention rollout) when it has
    attention layers; the classifier may be a prepared copy or an ONNX session, which hide them.
    """

    def __init__(self, classifier: Classifier, config: dict[str, Any], checkpoint: str, runtime: str,
                 topk: int = 5, model: nn.Module | None = None):
        self.classifier, self.config, self.topk = classifier, config, topk
        self.model = model if model is not None and _has_attention(model) else None
        self.about = {"checkpoint": Path(checkpoint).name or checkpoint,  # the run's name, not where it lives
                      "runtime": runtime, "classes": list(config["classes"]),
                      "img_size": config["img_size"], "in_chans": config["in_chans"],
                      "explain": self.model is not None}
        self.resize = EvalResize.from_config(config)
        self.lock = threading.Lock()

    def warm_up(self) -> None:
        """One forward pass now, so the first user does not wait for kernels to be prepared."""
        size, chans = self.config["img_size"], self.config["in_chans"]
        with self.lock:
            top_classes(self.classifier, torch.zeros(1, chans, size, size, dtype=torch.uint8), self.config)

    def _decode(self, data: bytes, name: str) -> torch.Tensor:
        """The upload as the model's uint8 input [C, S, S]; call it under the lock (it can take GBs)."""
        return resized_from_bytes(data, name, self.config["img_size"], self.config["in_chans"], self.resize)

    def predict(self, data: bytes, name: str, topk: int | None = None, explain: bool = False) -> dict[str, Any]:
        """Top classes; with ``explain`` also the /explain PNG as a data URL, from the same decoded image."""
        self._check_explainable(explain)
        with self.lock:  # decoding too: a small file can decode to GBs, so one image at a time
            image = self._decode(data, name)
            start = time.perf_counter()
            top = top_classes(self.classifier, image[None], self.config, topk or self.topk)[0]
            ms = 1e3 * (time.perf_counter() - start)
            png = self._rollout_png(image) if explain else None
        out = {"name": name, "topk": [{"class": c, "prob": p} for c, p in top], "ms": round(ms, 2)}
        if png is not None:
            out["explanation"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return out

    def explain(self, data: bytes, name: str) -> bytes:
        """A PNG of the image and its attention-rollout overlay: which patches the prediction used."""
        self._check_explainable(True)
        with self.lock:
            return self._rollout_png(self._decode(data, name))

    def _check_explainable(self, explain: bool) -> None:
        if explain and self.model is None:
            raise VitkitError("this checkpoint has no attention layers to explain (a CNN?)")

    def _rollout_png(self, image: torch.Tensor) -> bytes:
        with torch.no_grad():
            heat = attention_rollout(self.model, normalize(image[None], self.config["mean"], self.config["std"]))[0]
        strip = rollout_strip(heat, image.permute(1, 2, 0).numpy())
        buffer = io.BytesIO()
        Image.fromarray((strip * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()


def _has_attention(model: nn.Module) -> bool:
    try:
        return bool(attention_modules(model))
    except VitkitError:  # a CNN: nothing to explain
        return False


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                max_body: int = MAX_BODY_BYTES, max_connections: int = MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """A server ready for ``serve_forever()``; port 0 picks a free one (``server.server_port``).
    An IPv6 ``host`` (``::1``, ``::``) gets an IPv6 socket."""
    handler = type("Handler", (_Handler,), {"predictor": predictor, "max_body": max_body})
    server_class = _IPv6Server if ":" in host else _Server
    return server_class((host, port), handler, max_connections)


class _Server(ThreadingHTTPServer):
    """A thread per connection, up to ``max_connections``; past that a 503 at once, so clients that
    open connections and stall (each may hold its thread for ``_Handler.timeout``) cannot pile up threads."""

    def __init__(self, address: tuple, handler: type, max_connections: int = MAX_CONNECTIONS):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused: queue.Queue[socket.socket] = queue.Queue(maxsize=MAX_REFUSED)
        threading.Thread(target=self._drain_refused, daemon=True).start()
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            body = json.dumps({"error": "too many connections; try again shortly"}).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
                request.shutdown(socket.SHUT_WR)
                self.refused.put_nowait(request)  # closing on an unread upload would reset the connection
            except (OSError, queue.Full):
                self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _drain_refused(self) -> None:
        """One thread reads what refused clients still send (an upload: up to 5 s and 64 MB each), all of
        them at once, so each finishes sending and reads its 503 instead of a connection reset; it closes
        each when its client does or its allowance runs out."""
        selector = selectors.DefaultSelector()
        while True:
            waiting = selector.get_map()
            try:  # a blocking wait only when nothing is being drained
                request = self.refused.get(block=not waiting) if len(waiting) < MAX_REFUSED else None
            except queue.Empty:
                request = None
            if request is not None:
                request.setblocking(False)
                selector.register(request, selectors.EVENT_READ, _Allowance(time.monotonic() + 5.0, 64 << 20))
                continue  # take every queued connection before reading
            for key, _ in selector.select(timeout=0.05):
                try:
                    chunk = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                key.data.left = key.data.left - len(chunk) if chunk else 0  # b"": the client closed
            now = time.monotonic()
            for key in list(selector.get_map().values()):
                if key.data.left <= 0 or now > key.data.deadline:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


@dataclass
class _Allowance:
    """What a refused client may still send before it is closed on."""
    deadline: float
    left: int


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def form_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """The first file of a multipart/form-data body, and its file name."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_filename() is not None or part.get_content_maintype() == "image":
            return part.get_filename() or "upload", part.get_payload(decode=True) or b""
    raise VitkitError("the form holds no file: send one as a file field (curl -F file=@image.jpg), or the "
                      "image itself as the request body (curl --data-binary @image.jpg)")


class _Handler(BaseHTTPRequestHandler):
    predictor: Predictor
    max_body: int
    server_version = "vitkit"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped
    head_only = False

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = urlparse(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/health":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path == "/info":
            self._json(HTTPStatus.OK, self.predictor.about)
        elif path in ("/predict", "/explain"):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST with an image file as the body",
                        {"Allow": "POST, PUT"})
        else:
            self._not_found(path)

    def do_HEAD(self) -> None:  # noqa: N802 - health checks
        self.head_only = True  # GET's status and headers, without its body
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path not in ("/predict", "/explain"):
            return self._not_found(url.path)
        query = parse_qs(url.query)
        name = query.get("name", ["upload"])[0]
        topk = query.get("topk", [str(self.predictor.topk)])[0]
        if not (topk.isascii() and topk.isdigit() and int(topk) >= 1):
            return self._error(HTTPStatus.BAD_REQUEST, f"topk must be a positive integer, got {topk!r}")
        data = self._body(name)
        if data is None:
            return
        if self.headers.get_content_type() == "multipart/form-data":  # curl -F file=@cat.jpg, an HTML form
            try:
                form_name, data = form_file(self.headers["Content-Type"], data)
            except VitkitError as e:
                return self._error(HTTPStatus.BAD_REQUEST, str(e))
            name = query.get("name", [form_name])[0]
        try:
            if url.path == "/explain":
                self._send(HTTPStatus.OK, self.predictor.explain(data, name), "image/png")
            else:
                explain = query.get("explain", ["0"])[0].lower() in ("1", "true", "yes")
                self._json(HTTPStatus.OK, self.predictor.predict(data, name, int(topk), explain))
        except VitkitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:  # noqa: BLE001 - a bug must not drop the connection without an answer
            self.log_error("%s", traceback.format_exc())
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{name}: internal error ({type(e).__name__}: {e})")

    def _body(self, name: str) -> bytes | None:
        """The uploaded file, or None after answering why it cannot be read."""
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the image file as the request body, with its "
                                                    "Content-Length (curl --data-binary @image.jpg ...)")
            return None
        if int(length) > self.max_body:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"{name}: {int(length):,} bytes is over the limit of {self.max_body:,}")
            return None
        return self.rfile.read(int(length))

    do_PUT = do_POST  # curl -T image.jpg

    def _not_found(self, path: str) -> None:
        self._error(HTTPStatus.NOT_FOUND, f"{path}: no such endpoint (GET /, /health, /info; "
                                          "POST /predict, /explain)")

    def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _json(self, status: HTTPStatus, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)
