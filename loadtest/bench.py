"""`make bench`: every published figure, each beside a baseline measured in the same run.

Starts a fresh patternstore server on a temp database and a trivial grpc.aio server
returning a fixed response (loadtest/baseline_server.py), loads N patterns, then drives
both with h2load using pre-framed bodies. Successes are counted on the servers (h2load
counts any HTTP 200, gRPC errors included). Prints a table and writes bench-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("server", "client", "loadtest"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import grpc  # noqa: E402
from h2load_driver import frame, h2load_available, run_h2load  # noqa: E402
from patternstore import DURABILITY_QUEUED, Pattern, PatternStoreClient  # noqa: E402
from patternstore.v1 import patternstore_pb2 as pb  # noqa: E402

_SERVING = re.compile(r"grpc=[^ ]*:(\d+) metrics=[^ ]*:(\d+)")
_BASELINE = re.compile(r"baseline serving port=(\d+)")


@dataclass
class Figure:
    name: str
    unit: str
    ours: float
    baseline: float | None
    ratio: float | None
    goal: str
    met: bool | None


def _payload(i: int) -> bytes:
    # Shaped like a learning worker's recipe: ~500 bytes of JSON.
    steps = [
        {"tool": f"tool_{(i + k) % 17}", "args": {"path": f"src/mod_{k}.py", "line": k * 7}}
        for k in range(5)
    ]
    doc = {
        "goal": f"fix failing test {i}",
        "conditions": ["tests fail", "lint clean"],
        "actions": steps,
        "success": {"tests": "pass"},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _pattern(i: int) -> Pattern:
    return Pattern(
        id=f"pattern-{i:07d}",
        type=f"type{i % 8}",
        name=f"recipe {i}",
        description="learned by worker",
        data=_payload(i),
        metadata={"worker": f"w{i % 16}"},
    )


class _Proc:
    def __init__(self, cmd: list[str], ready: re.Pattern[str], log: Path) -> None:
        self.log = log
        self._f = open(log, "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = ready.search(log.read_text(errors="replace"))
            if m:
                self.match = m
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited:\n{log.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(log.read_text())

    def rss_anon_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._f.close()


def _handled_ok(metrics_port: int, method: str) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    pattern = re.compile(
        r'grpc_server_handled_total\{grpc_code="OK",grpc_method="' + method + r'"[^}]*\} ([\d.e+]+)'
    )
    m = pattern.search(text.decode())
    return int(float(m[1])) if m else 0


def _baseline_count(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return int(ch.unary_unary("/bench.Baseline/Count")(b"", timeout=10))


def _measure(
    target: str,
    method: str,
    body: bytes,
    count: Callable[[], int],
    requests: int,
    clients: int,
    streams: int,
) -> tuple[float, int]:
    """Successful calls per second, counted by the server."""
    before = count()
    result = run_h2load(target, method, body, requests=requests, clients=clients, streams=streams)
    ok = count() - before
    return ok / result.seconds, ok


def run(args: argparse.Namespace) -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="patternstore-bench-"))
    figures: list[Figure] = []
    server = baseline = None
    try:
        server = _Proc(
            [
                sys.executable,
                "-m",
                "patternstore_server",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
                str(work / "data"),
                "--l1-max-entries",
                str(max(args.patterns, 1000)),
            ],
            _SERVING,
            work / "server.log",
        )
        port, mport = int(server.match[1]), int(server.match[2])
        target = f"127.0.0.1:{port}"
        n = args.patterns
        print(f"loading {n} patterns ...", file=sys.stderr)
        started = time.perf_counter()
        with PatternStoreClient(target, timeout=120) as c:
            for lo in range(0, n, 1000):
                c.store_patterns(
                    [_pattern(i) for i in range(lo, min(n, lo + 1000))],
                    durability=DURABILITY_QUEUED,
                )
            c.flush()
            load_s = time.perf_counter() - started
            print(
                f"loaded in {load_s:.1f} s ({n / load_s:,.0f} patterns/s, QUEUED + Flush)",
                file=sys.stderr,
            )
            hot = [f"pattern-{i:07d}" for i in range(100)]
            c.get_patterns(hot)  # fill L1 with the ids the read figures use
            one = c.get_pattern(hot[0]).SerializeToString()
            hundred = c.get_patterns(hot).SerializeToString()

        def ours(method: str) -> Callable[[], int]:
            return lambda: _handled_ok(mport, method)

        scale = 1 if not args.quick else 0.05
        reqs = max(200, int(args.requests * scale))

        # 1. GetPattern unary on L1 hits.
        body = frame(pb.GetPatternRequest(id=hot[0]))
        baseline = _Proc(
            [
                sys.executable,
                str(ROOT / "loadtest/baseline_server.py"),
                _write(work / "one.bin", one),
            ],
            _BASELINE,
            work / "baseline1.log",
        )
        bport = int(baseline.match[1])
        btarget = f"127.0.0.1:{bport}"
        our_rps, _ = _measure(target, "GetPattern", body, ours("GetPattern"), reqs, 4, 32)
        base_rps, _ = _measure(
            btarget, "GetPattern", body, lambda: _baseline_count(bport), reqs, 4, 32
        )
        baseline.stop()
        figures.append(
            _figure(
                "get_unary", "calls/s", our_rps, base_rps, "ratio >= 0.9", lambda r, o: r >= 0.9
            )
        )

        # 2. GetPatterns(100) on L1 hits, in patterns/s.
        body = frame(pb.GetPatternsRequest(ids=hot))
        baseline = _Proc(
            [
                sys.executable,
                str(ROOT / "loadtest/baseline_server.py"),
                _write(work / "hundred.bin", hundred),
            ],
            _BASELINE,
            work / "baseline100.log",
        )
        bport = int(baseline.match[1])
        btarget = f"127.0.0.1:{bport}"
        batch_reqs = max(100, reqs // 5)
        our_rps, _ = _measure(target, "GetPatterns", body, ours("GetPatterns"), batch_reqs, 4, 8)
        base_rps, _ = _measure(
            btarget, "GetPatterns", body, lambda: _baseline_count(bport), batch_reqs, 4, 8
        )
        baseline.stop()
        baseline = None
        figures.append(
            _figure(
                "get_batch_100",
                "patterns/s",
                our_rps * 100,
                base_rps * 100,
                ">= 250000/s and ratio >= 0.9",
                lambda r, o: r >= 0.9 and o >= 250_000,
            )
        )

        # 4. Durable confidence updates: 1000 COMMITTED outcomes per call.
        updates = pb.UpdateConfidenceBatchRequest(
            updates=[
                pb.UpdateConfidenceRequest(id=f"pattern-{i % n:07d}", outcome=1 + i % 3)
                for i in range(1000)
            ]
        )
        body = frame(updates)
        upd_reqs = max(20, reqs // 100)
        our_rps, _ = _measure(
            target, "UpdateConfidenceBatch", body, ours("UpdateConfidenceBatch"), upd_reqs, 2, 2
        )
        figures.append(
            _figure(
                "durable_updates",
                "updates/s",
                our_rps * 1000,
                None,
                ">= 100000/s",
                lambda r, o: o >= 100_000,
            )
        )

        # 5. Durable StorePatterns(100).
        stores = pb.StorePatternsRequest(
            requests=[pb.StorePatternRequest(pattern=_pattern(n + i)) for i in range(100)]
        )
        body = frame(stores)
        our_rps, _ = _measure(
            target, "StorePatterns", body, ours("StorePatterns"), max(20, reqs // 20), 2, 2
        )
        figures.append(
            _figure(
                "durable_stores",
                "patterns/s",
                our_rps * 100,
                None,
                ">= 100000/s",
                lambda r, o: o >= 100_000,
            )
        )
        figures.append(
            _figure(
                "rss_anon_mb",
                "MB",
                server.rss_anon_mb(),
                None,
                f"<= 100 MB ({n} patterns)",
                lambda r, o: o <= 100,
            )
        )
    finally:
        if baseline is not None:
            baseline.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return figures


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _figure(
    name: str,
    unit: str,
    ours: float,
    baseline: float | None,
    goal: str,
    met: Callable[[float, float], bool],
) -> Figure:
    ratio = ours / baseline if baseline else None
    return Figure(
        name,
        unit,
        round(ours, 1),
        None if baseline is None else round(baseline, 1),
        None if ratio is None else round(ratio, 3),
        goal,
        met(ratio if ratio is not None else 0.0, ours),
    )


def _print(figures: list[Figure]) -> None:
    print(f"{'figure':<18} {'ours':>14} {'baseline':>14} {'ratio':>7}  {'goal':<30} met")
    for f in figures:
        base = f"{f.baseline:,.0f}" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        print(
            f"{f.name:<18} {f.ours:>14,.1f} {base:>14} {ratio:>7}  {f.goal:<30} "
            f"{'yes' if f.met else 'no'}   [{f.unit}]"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=100_000)
    parser.add_argument(
        "--requests",
        type=int,
        default=40_000,
        help="h2load calls for the unary figure (others scale from it)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of the harness (tiny sizes; figures meaningless)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.patterns = min(args.patterns, 2000)
    if not h2load_available():
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    figures = run(args)
    _print(figures)
    if not args.quick:
        Path(args.out).write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
