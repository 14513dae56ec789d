"""`vitkit serve` under uvicorn: the socket, the timeouts, the workers.

What a server for others needs beyond the app (serve/app.py):

- a listen backlog of 2,048 (bursts of new connections wait in the kernel instead of being reset);
- a header timeout: a connection that has not sent a whole request head within ``header_timeout``
  seconds is closed (uvicorn alone waits forever), and a body that does not arrive within the app's
  ``body_timeout`` is answered 408; idle keep-alive connections are closed after ``keep_alive`` s.
  A stalled client costs a socket and a few kB, never a thread, so 40 of them change nothing;
- ``max_connections``: past it, uvicorn answers 503 at once (bounded memory, not a queue of sockets);
- ``workers``: N processes sharing the socket, each with its own model, batcher and 1/N of the cores.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import VitkitError
from .app import ServeSettings, create_app
from .predictor import load_predictor

WORKER_ENV = "VITKIT_SERVE_WORKER"
"""How the parent tells each worker process what to load (JSON), since uvicorn spawns them afresh."""


@dataclass(frozen=True)
class ServerOptions:
    """The listening side of `vitkit serve`: where, how many processes, and how long clients may stall."""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    keep_alive: float = 5.0
    header_timeout: float = 10.0
    max_connections: int = 1024
    backlog: int = 2048


@dataclass(frozen=True)
class ModelSource:
    """What each worker loads: `vitkit serve`'s checkpoint or model name, precision, ONNX file, top-k."""
    source: str
    precision: str = "auto"
    onnx: str | None = None
    topk: int = 5
    device: str = "cpu"


class _Config(uvicorn.Config):
    """uvicorn's config with the header timeout that :class:`_Protocol` reads."""

    def __init__(self, *args, header_timeout: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head is not complete in time
    (slow-loris clients that open a connection and trickle or send nothing)."""

    def __init__(self, config: uvicorn.Config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._header_timeout = getattr(config, "header_timeout", 10.0)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def settle() -> None:
    """Move what loading made (the model, the libraries: millions of objects) out of the garbage collector's
    sight, so its full collections under load scan only what requests make, not stall them all."""
    gc.collect()
    gc.freeze()


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one; an IPv6 host: an IPv6 socket): clients
    may connect at once and wait in the backlog while the model loads."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # port taken, address not local, ...
        sock.close()
        raise VitkitError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def make_config(app, options: ServerOptions, **kwargs) -> _Config:
    """uvicorn's config for ``app`` (an ASGI app, or for workers an import string of a factory)."""
    return _Config(app, host=options.host, port=options.port, http=_Protocol, loop="auto",
                   timeout_keep_alive=options.keep_alive, header_timeout=options.header_timeout,
                   limit_concurrency=options.max_connections, backlog=options.backlog,
                   log_level="warning", access_log=False, server_header=False, **kwargs)


def serve(model: ModelSource, settings: ServeSettings, options: ServerOptions,
          announce: Callable[[int], None] = lambda port: None) -> None:
    """Load the model, listen, call ``announce(port)`` and serve until Ctrl-C (SIGINT) or SIGTERM."""
    predictor = load_predictor(**asdict(model))  # also in the parent of workers: a bad checkpoint fails here, once
    sock = bind(options.host, options.port, options.backlog)
    port = sock.getsockname()[1]
    try:
        if options.workers == 1:
            predictor.warm_up((1, settings.max_batch))
            settle()
            server = _AnnouncingServer(make_config(create_app(predictor, settings), options), lambda: announce(port))
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
                pass
            return
        del predictor
        _serve_workers(model, settings, options, sock, announce)
    finally:
        sock.close()


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, calling ``announce()`` once it answers (and handles Ctrl-C)."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]):
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()


def _serve_workers(model: ModelSource, settings: ServeSettings, options: ServerOptions, sock: socket.socket,
                   announce: Callable[[int], None]) -> None:
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="vitkit-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # /metrics sums the workers
        os.environ[WORKER_ENV] = json.dumps({"model": asdict(model), "settings": asdict(settings),
                                             "workers": options.workers})
        config = make_config("vitkit.serve.server:worker_app", options, factory=True, workers=options.workers)
        announce(sock.getsockname()[1])
        Multiprocess(config, sockets=[sock]).run()


def worker_app():
    """The app of one worker process (uvicorn calls it in each): its own model on 1/N of the cores."""
    import torch

    spec = json.loads(os.environ[WORKER_ENV])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["workers"]))
    settings = ServeSettings(**spec["settings"])
    predictor = load_predictor(**spec["model"])
    predictor.warm_up((1, settings.max_batch))
    app = create_app(predictor, settings)
    settle()
    return app


class running:  # noqa: N801 - used as a context manager, like open()
    """Serve ``app`` on a thread of this process while the ``with`` block runs (tests, notebooks):
    ``with running(app) as url: ...``; port 0 in ``options`` picks a free port."""

    def __init__(self, app, options: ServerOptions = ServerOptions(port=0)):
        import threading

        self.sock = bind(options.host, options.port, options.backlog)
        self.server = uvicorn.Server(make_config(app, options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        host = f"[{options.host}]" if ":" in options.host else options.host
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"

    def __enter__(self) -> str:
        import time

        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
