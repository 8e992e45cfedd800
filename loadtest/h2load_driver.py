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

__all__ = [
    "H2loadResult",
    "PacedLoad",
    "frame",
    "h2load_available",
    "latencies_us",
    "paced_rate",
    "run_h2load",
    "write_body",
]

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
    requests: int = 0,
    duration: float = 0.0,
    warmup: float = 0.0,
    rps: float = 0.0,
    log_file: Path | None = None,
    clients: int = 4,
    streams: int = 16,
    threads: int = 1,
) -> H2loadResult:
    """POST ``body`` to /patternstore.v1.PatternStore/``method``.

    Either ``requests`` calls, or for ``duration`` seconds (after ``warmup``, not counted
    by h2load). ``rps`` caps each client's request rate (an open-ish load for latency
    figures); ``log_file`` gets h2load's per-request log (see ``latencies_us``).
    """
    if (requests > 0) == (duration > 0):
        raise ValueError("give requests or duration, not both")
    path = method if method.startswith("/") else f"/patternstore.v1.PatternStore/{method}"
    with tempfile.NamedTemporaryFile(suffix=".grpc") as f:
        f.write(body)
        f.flush()
        if requests:
            amount = ["-n", str(requests)]
        else:
            amount = ["-D", f"{round(duration * 1000)}ms"]
            if warmup > 0:
                amount += ["--warm-up-time", f"{round(warmup * 1000)}ms"]
        if rps > 0:
            # h2load takes a whole number per client; below 1 it would not send at all.
            amount.append(f"--rps={max(1, round(rps))}")
        if log_file is not None:
            amount.append(f"--log-file={log_file}")
        cmd = [
            "h2load",
            *amount,
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
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=600 + duration + warmup
        ).stdout
    return _result(out)


def _result(out: str) -> H2loadResult:
    finished = _FINISHED.search(out)
    counts = _REQUESTS.search(out)
    if not finished or not counts:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return H2loadResult(seconds, int(counts[3]), int(counts[4]), out)


class PacedLoad:
    """h2load calling at a steady ``rate`` in all, from ``clients`` evenly staggered clients.

    ``--rps`` is no steady load: h2load's rate timer fires about every 10 ms and sends what
    is due in one burst, so a latency taken under it is mostly the time to drain a burst.
    A timing script (one line per call: its offset in ms, the URI) spaces calls evenly
    instead. h2load runs one script for every client of a process, in step, so each
    client is an h2load process of its own, its script shifted by its share of the gap:
    the calls of all of them interleave evenly. h2load's timers have about 1 ms
    resolution and a late call is not made up for (one client manages ~700 calls/s),
    so the rate reached can fall short: callers read it from the log (``paced_rate``).

    A context manager: the clients run in the background from ``__enter__``; ``wait()``
    lets them finish their scripts; leaving the block stops any still running and
    writes their merged log to ``log_file``.
    """

    def __init__(
        self,
        target: str,
        method: str,
        body: bytes,
        *,
        rate: float,
        seconds: float,
        log_file: Path | None = None,
        clients: int = 4,
        streams: int = 32,
    ) -> None:
        path = method if method.startswith("/") else f"/patternstore.v1.PatternStore/{method}"
        self._uri = f"http://{target}{path}"
        self._body = body
        self._clients = clients
        self._gap_ms = 1000.0 * clients / rate  # between one client's calls
        self._calls = max(1, round(rate / clients * seconds))
        self.seconds = seconds
        self._log_file = log_file
        self._streams = streams
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> PacedLoad:
        self._dir = tempfile.TemporaryDirectory(prefix="h2load-")
        work = Path(self._dir.name)
        (work / "body.grpc").write_bytes(self._body)
        for c in range(self._clients):
            phase = c * self._gap_ms / self._clients
            script = work / f"client{c}.script"
            with script.open("w") as f:
                f.writelines(
                    f"{phase + i * self._gap_ms:.3f}\t{self._uri}\n" for i in range(self._calls)
                )
            cmd = [
                "h2load",
                f"--timing-script-file={script}",
                f"--log-file={work / f'client{c}.log'}",
                "-c",
                "1",
                "-m",
                str(self._streams),
                "-t",
                "1",
                "-d",
                str(work / "body.grpc"),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
            ]
            self._procs.append(
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        return self

    def running(self) -> bool:
        """Whether every client still runs (an h2load that cannot connect exits, rc 0)."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def wait(self) -> H2loadResult:
        """Wait for every client to finish its script: their calls and time, summed."""
        results = []
        for proc in self._procs:
            out, _ = proc.communicate(timeout=600 + 4 * self.seconds)
            if proc.returncode != 0:
                raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out}")
            results.append(_result(out))
        return H2loadResult(
            max(r.seconds for r in results),
            sum(r.requests_done for r in results),
            sum(r.http_succeeded for r in results),
            "\n".join(r.output for r in results),
        )

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
            if proc.stdout is not None and not proc.stdout.closed:
                proc.communicate(timeout=30)  # reap it and drain its pipe (not after wait())
        if self._dir is None:
            return
        if self._log_file is not None:
            logs = sorted(Path(self._dir.name).glob("client*.log"))
            self._log_file.write_text("".join(log.read_text() for log in logs))
        self._dir.cleanup()


def paced_rate(log_file: Path, skip_s: float = 0.0) -> float:
    """Calls/s the log's requests started at (after ``skip_s``), whatever their status."""
    starts = sorted(int(line.split("\t", 1)[0]) for line in log_file.read_text().splitlines())
    starts = [t for t in starts if t - starts[0] >= skip_s * 1e6] if starts else []
    if len(starts) < 2:
        return 0.0
    return (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e6)


def latencies_us(log_file: Path, skip_s: float = 0.0) -> list[int]:
    """Latencies (microseconds) of the HTTP 200 responses in an h2load ``--log-file``.

    Columns: start time (us since the epoch), status, us until the response ended.
    Requests that started within ``skip_s`` of the first one are dropped (a warm-up).
    """
    rows: list[tuple[int, int]] = []
    for line in log_file.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "200":
            rows.append((int(cols[0]), int(cols[2])))
    if not rows:
        return []
    first = min(start for start, _ in rows)
    return [lat for start, lat in rows if start - first >= skip_s * 1e6]


def write_body(path: Path, *messages: Message) -> Path:
    path.write_bytes(frame(*messages))
    return path
