"""Drive a gRPC method with h2load (Debian's nghttp2-client) using pre-framed bodies.

A gRPC request body is frames of: a 0 byte (not compressed), a 4-byte big-endian length,
the serialised message. One frame in a body is a unary call; N frames drive a client
stream. h2load counts every HTTP 200 as a success, gRPC errors included (they travel in
trailers), so callers count successes on the server instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

__all__ = ["H2loadResult", "frame", "h2load_available", "run_h2load"]

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")


def frame(*messages: Message | bytes) -> bytes:
    out = bytearray()
    for m in messages:
        body = m if isinstance(m, bytes) else m.SerializeToString()
        out += b"\x00" + len(body).to_bytes(4, "big") + body
    return bytes(out)


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


@dataclass(frozen=True)
class H2loadResult:
    seconds: float
    requests_done: int
    http_succeeded: int
    output: str


def run_h2load(
    target: str,
    method: str,
    body: bytes,
    *,
    requests: int,
    clients: int = 4,
    streams: int = 16,
    threads: int = 1,
) -> H2loadResult:
    """POST ``body`` to /patternstore.v1.PatternStore/``method`` ``requests`` times."""
    path = method if method.startswith("/") else f"/patternstore.v1.PatternStore/{method}"
    with tempfile.NamedTemporaryFile(suffix=".grpc") as f:
        f.write(body)
        f.flush()
        cmd = [
            "h2load",
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            str(threads),
            "-d",
            f.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{target}{path}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    finished = _FINISHED.search(out)
    counts = _REQUESTS.search(out)
    if not finished or not counts:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return H2loadResult(seconds, int(counts[3]), int(counts[4]), out)


def write_body(path: Path, *messages: Message) -> Path:
    path.write_bytes(frame(*messages))
    return path
