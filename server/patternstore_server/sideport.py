"""The HTTP side port: /metrics for Prometheus, /healthz and /readyz for orchestrators."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["SidePort"]

_StartResponse = Callable[..., Any]


# Connections served at once; more are closed at once. A scraper and a few probes need a
# handful; an unauthenticated port must not take a thread and buffered headers (up to
# 6.5 MB) per connection without bound (helper-27: 300 stalled requests, 312 threads).
_MAX_CONNECTIONS = 16
# Seconds a connection may sit between reads or writes: a client sending its request
# a byte at a time is dropped rather than holding its thread for ever.
_IO_TIMEOUT_S = 5.0


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up /healthz probes.
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Counts the connections in a handler thread now.
        self._slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    timeout = _IO_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


class SidePort:
    """Serves on its own thread; ``ready()`` decides /readyz (503 until it says yes)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], str | None]
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="patternstore-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            problem = self._ready()
            if problem is None:
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", f"not ready: {problem}\n")
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")


def _text(start_response: _StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]
