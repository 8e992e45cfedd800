"""The load-test harness works: bench --quick, locust headless, the ghz configs, pybench.

No timing assertions (a benchmark prints figures; it never fails on a time). Tools missing
on a dev machine (h2load, redis-server, locust) are skipped and said so; on CI (CI=true)
.ci/run installs them, so there a skip is a failure.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from patternstore.v1 import patternstore_pb2 as pb

from .proc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
LOADTEST = ROOT / "loadtest"
sys.path.insert(0, str(LOADTEST))

import bench  # noqa: E402
import pybench  # noqa: E402
from h2load_driver import PacedLoad, frame, h2load_available, latencies_us, paced_rate  # noqa: E402

FIGURES = [
    "get_unary",
    "get_batch_100",
    "py_client_batch_vs_redis",
    "durable_updates",
    "durable_stores",
    "learning_overhead",
    "get_p99_ms",
    "rss_anon_mb",
]
ON_CI = os.environ.get("CI", "").lower() == "true"


def _needs(available: bool, what: str, install: str) -> None:
    if available:
        return
    if ON_CI:
        pytest.fail(f"{what} is missing; .ci/run installs it ({install})")
    pytest.skip(f"{what} is missing ({install})")


def test_bench_quick_runs_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench-results.json"
    proc = subprocess.run(
        [sys.executable, str(LOADTEST / "bench.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == FIGURES
    for r in results:
        assert set(r) == {"name", "unit", "ours", "baseline", "ratio", "goal", "met"}
    # The table has a row per figure.
    for name in FIGURES:
        assert name in proc.stdout
    has_h2load = shutil.which("h2load") is not None
    has_redis = (
        shutil.which("redis-server") is not None and importlib.util.find_spec("redis") is not None
    )
    by_name = {r["name"]: r for r in results}
    # What runs without optional tools always produced a figure.
    assert by_name["py_client_batch_vs_redis"]["ours"] is not None
    assert by_name["rss_anon_mb"]["ours"] is not None
    if ON_CI:
        assert "skipped" not in proc.stdout, proc.stdout
    if not has_h2load:
        assert "h2load missing" in proc.stdout
        assert by_name["get_unary"]["ours"] is None
    else:
        assert by_name["get_unary"]["ours"] is not None
    if not has_redis:
        assert "skipped: redis baselines" in proc.stdout
    else:
        assert by_name["py_client_batch_vs_redis"]["baseline"] is not None


def test_locust_learning_workers_make_requests_without_failures(tmp_path: Path) -> None:
    _needs(
        importlib.util.find_spec("locust") is not None,
        "locust",
        "pip install locust: the test extras",
    )
    server = ServerProcess(tmp_path / "data")
    try:
        pybench.load_patterns(server.target, 0, 500, progress=False)
        prefix = tmp_path / "locust"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOADTEST / "locustfile.py"),
                "--headless",
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "4s",
                "--host",
                server.target,
                "--patterns",
                "500",
                "--csv",
                str(prefix),
                "--only-summary",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, proc.stderr
    # The interceptor reports each method by name, streaming included.
    assert {"GetPattern", "GetPatterns", "UpdateConfidence", "RecordOutcomes"} <= set(rows)
    assert all(row["Type"] == "grpc" for row in rows.values())


def _ghz_configs() -> list[Path]:
    return sorted((LOADTEST / "ghz").glob("*.json"))


def test_ghz_configs_cover_the_three_methods() -> None:
    calls = {json.loads(p.read_text())["call"] for p in _ghz_configs()}
    assert calls == {
        "patternstore.v1.PatternStore.GetPattern",
        "patternstore.v1.PatternStore.GetPatterns",
        "patternstore.v1.PatternStore.UpdateConfidenceBatch",
    }
    readme = (LOADTEST / "ghz" / "README.md").read_text()
    for p in _ghz_configs():
        assert f"ghz --config loadtest/ghz/{p.name}" in readme


@pytest.mark.parametrize("path", _ghz_configs(), ids=lambda p: p.name)
def test_ghz_config_matches_the_descriptors(path: Path) -> None:
    cfg = json.loads(path.read_text())
    # No proto or protoset: ghz must use the server's reflection.
    assert not {"proto", "protoset", "import-paths"} & set(cfg)
    assert cfg["insecure"] is True
    assert cfg["host"] == "127.0.0.1:50051"
    package_service, _, method_name = cfg["call"].rpartition(".")
    package, _, service_name = package_service.rpartition(".")
    assert package == pb.DESCRIPTOR.package
    service = pb.DESCRIPTOR.services_by_name[service_name]
    method = service.methods_by_name[method_name]
    assert not method.client_streaming and not method.server_streaming
    request_cls = getattr(pb, method.input_type.name)
    # ParseDict rejects unknown fields and bad enum names: the JSON is a valid request.
    request = json_format.ParseDict(cfg["data"], request_cls())
    assert request.ByteSize() > 0


def test_pybench_mix_and_zipf() -> None:
    assert pybench.parse_mix("get=3,outcome=1,store=0") == [("get", 3.0), ("outcome", 1.0)]
    for bad in ("get", "fly=1", "get=-1", "store=0"):
        with pytest.raises(ValueError):
            pybench.parse_mix(bad)
    z = pybench.Zipf(1000, 1.0, seed=3)
    ranks = z.sample(20_000)
    assert min(ranks) >= 0 and max(ranks) < 1000
    # Rank 0 is the most popular (about 13% at s=1 over 1000 ids).
    assert ranks.count(0) > ranks.count(10) > 0
    assert pybench.pattern_id(7) == "pattern-0000007"
    assert pybench.make_pattern(7).id == "pattern-0000007"


def test_h2load_framing_and_log(tmp_path: Path) -> None:
    msg = pb.GetPatternRequest(id="x")
    body = msg.SerializeToString()
    assert frame(msg, msg) == 2 * (b"\x00" + len(body).to_bytes(4, "big") + body)
    log = tmp_path / "h2load.log"
    log.write_text("1000000\t200\t150\n1500000\t200\t250\n2500000\t200\t350\n2600000\t503\t9\n")
    assert latencies_us(log) == [150, 250, 350]
    assert latencies_us(log, skip_s=1.0) == [350]
    # The rate calls started at counts every status, and the warm-up is left out.
    assert paced_rate(log) == pytest.approx(3 / 1.6)
    assert paced_rate(log, skip_s=1.0) == pytest.approx(1 / 0.1)


@pytest.mark.skipif(not h2load_available(), reason="h2load (nghttp2-client) is not installed")
def test_paced_load_spaces_calls_evenly(tmp_path: Path) -> None:
    """Staggered timing scripts space the calls evenly, not --rps's 10 ms bursts."""
    server = ServerProcess(tmp_path / "data")
    try:
        log = tmp_path / "paced.log"
        body = frame(pb.GetPatternRequest(id="missing"))
        with PacedLoad(
            server.target, "GetPattern", body, rate=1000, seconds=0.5, log_file=log, clients=2
        ) as load:
            result = load.wait()
        assert result.requests_done == 500
        starts = sorted(int(line.split("\t")[0]) for line in log.read_text().splitlines())
        assert len(starts) == 500
        # Two clients at 500/s each, a call every 2 ms, the second 1 ms after the first.
        # h2load falls behind a schedule this fine (far behind when starved of CPU), so
        # only the upper bound is firm. --rps would send 5 a client at once every 10 ms.
        assert 0 < paced_rate(log) < 1100
        per_ms: dict[int, int] = {}
        for t in starts:
            per_ms[t // 1000] = per_ms.get(t // 1000, 0) + 1
        assert max(per_ms.values()) <= 4
    finally:
        server.close()


def test_latency_schedule_correction() -> None:
    """The p99's schedule is corrected toward the rate asked, from what runs reached."""
    # One run reached 80% of what it asked: ask that much more.
    assert bench._next_schedule([(1000.0, 800.0)], 1000.0) == pytest.approx(1250.0)
    # Two runs: interpolate (1250 reached 1100, so 1000 lies between 1000 and 1250).
    assert bench._next_schedule([(1000.0, 800.0), (1250.0, 1100.0)], 1000.0) == (
        pytest.approx(1000.0 + 200.0 * 250.0 / 300.0)
    )
    # A run that reached nothing does not send the schedule to infinity.
    assert bench._next_schedule([(1000.0, 0.0)], 1000.0) == 3000.0
    # Asking more reached less (noise, saturation): scale by the last miss instead.
    assert bench._next_schedule([(2500.0, 1808.0), (3458.0, 1700.0)], 2500.0) == (
        pytest.approx(3458.0 * 2500.0 / 1700.0)
    )
