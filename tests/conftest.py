"""Fixtures: a real server on a real port (bound to port 0) over a real SQLite file."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from patternstore import PatternStoreClient
from patternstore_server.config import Settings, load_settings
from patternstore_server.server import PatternStoreServer


class FakeClock:
    """The one fake we allow: wall-clock nanoseconds the test moves by hand."""

    def __init__(self, start_ns: int = 1_800_000_000 * 10**9) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


class RunningServer:
    """A PatternStoreServer on its own event loop thread, as the process would run it."""

    def __init__(self, settings: Settings, clock: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = PatternStoreServer(settings, clock)
        self.run(self.server.start())
        self.port = self.server.port
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the server's loop thread (where the engine's state lives)."""

        async def _call() -> Any:
            return fn()

        return self.run(_call())

    def stop(self, grace: float = 5.0) -> None:
        if self.loop.is_running():
            self.run(self.server.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "max_delay_ms": 1.0,
    }
    base.update(overrides)
    return load_settings([], environ={}, **base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(clock: Callable[[], int] = time.time_ns, **overrides: Any) -> RunningServer:
        data_dir = Path(overrides.pop("data_dir", tmp_path / "data"))
        s = RunningServer(make_settings(data_dir, **overrides), clock)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(start_server: Callable[..., RunningServer], clock: FakeClock) -> RunningServer:
    return start_server(clock)


@pytest.fixture
def client(server: RunningServer) -> Iterator[PatternStoreClient]:
    with PatternStoreClient(server.target, timeout=10) as c:
        yield c


def self_signed_cert(directory: Path, cn: str, stem: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate: (``stem``.pem, ``stem``.key) in ``directory``."""
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    output = ["-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", *request, *output], check=True, capture_output=True)
    return cert, key
