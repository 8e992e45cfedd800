"""The Grafana dashboard, proven on a real Prometheus scraping a real server.

A patternstore subprocess gets a short generated load while a Prometheus (the Debian
package's binary, temp storage, 1 s scrapes) scrapes it with the job from
deploy/prometheus/prometheus.yml. Then every PromQL expression in the dashboard JSON is
evaluated through /api/v1/query. An expression with no series, or with only NaN
samples, is a panel that would draw nothing; the test lists all of them at once.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from patternstore import (
    CONSISTENCY_STRONG,
    DURABILITY_QUEUED,
    Pattern,
    PatternStoreClient,
    update_request,
)

from .proc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
JOB = "patternstore"
SCRAPE_S = 1

# Grafana's own variables. $__rate_interval is set per evaluation (see _variables).
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


# -- the dashboard -------------------------------------------------------------------------


def dashboards() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows (Grafana keeps them there)."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every Prometheus query in the dashboard."""
    found = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"{panel.get('title')} / {target.get('refId')}", target["expr"]))
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace $name, ${name}, ${name:format} and [[name]] as Grafana would.

    An unknown variable is an error here: Grafana would send the literal "$name" to
    Prometheus and the panel would fail to parse.
    """

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(one, expr)


def _variables(dashboard: dict[str, Any], rate_interval_s: int) -> dict[str, str]:
    # $__rate_interval is max(4 x scrape interval, $__interval + scrape interval) in
    # Grafana; here it must span the whole short load so every counter moved inside it.
    window = f"{rate_interval_s}s"
    values = {
        "__rate_interval": window,
        "__interval": f"{SCRAPE_S}s",
        "__interval_ms": str(SCRAPE_S * 1000),
        "__range": window,
        "__range_s": str(rate_interval_s),
        "__range_ms": str(rate_interval_s * 1000),
    }
    # Dashboard variables as a viewer first sees them: "All" (every instance) where
    # allowed, otherwise the saved current value.
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value")
        if var.get("includeAll"):
            values[var["name"]] = var.get("allValue") or ".*"
        elif isinstance(current, list):
            values[var["name"]] = "|".join(current)
        elif current is not None:
            values[var["name"]] = str(current)
        else:
            raise AssertionError(f"variable {var['name']} has neither All nor a current value")
    return values


# -- Prometheus ------------------------------------------------------------------------------


def required_binary(name: str) -> str:
    """The path of a system binary; skip without it locally, fail on CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is not installed; .ci/run installs the Debian package prometheus")
    pytest.skip(f"{name} is not installed (apt-get install prometheus)")


def _free_port() -> int:
    # Prometheus does not report the port it bound for :0, so pick one ourselves.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class Prometheus:
    """A Prometheus process on a free port with its own temp storage; close() kills it."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        binary = required_binary("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # The Debian binary defaults to /usr/share/prometheus consoles; not needed.
                f"--web.console.templates={workdir}",
                f"--web.console.libraries={workdir}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of expr at the current time."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = _get_json(url)
        except urllib.error.HTTPError as exc:
            # 400/422 carry the parse or execution error in the JSON body.
            body = json.load(exc)
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> Any:
        return _get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _scrape_config(metrics_target: str) -> dict[str, Any]:
    """The deployed patternstore job (path, relabelling) pointed at the test server."""
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = [j for j in deployed["scrape_configs"] if j["job_name"] == JOB]
    assert jobs, f"{PROMETHEUS_CONFIG} has no job {JOB!r}"
    job = {**jobs[0], "static_configs": [{"targets": [metrics_target]}]}
    job["scrape_interval"] = job["scrape_timeout"] = f"{SCRAPE_S}s"
    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [job],
    }


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _scraped_after(prom: Prometheus, moment: float) -> bool:
    """True once a successful scrape of the job happened after the wall-clock moment."""
    samples = prom.query(f'timestamp(up{{job="{JOB}"}} == 1)')
    return bool(samples) and float(samples[0]["value"][1]) > moment


# -- the load --------------------------------------------------------------------------------

_TYPES = ("plan", "fix", "refactor.step")
_OUTCOMES = ("success", "failure", "partial")


def _pattern(rng: random.Random, id: str) -> Pattern:
    return Pattern(
        id=id,
        type=rng.choice(_TYPES),
        name=f"pattern {id}",
        data=json.dumps({"steps": [rng.randrange(100) for _ in range(5)]}).encode(),
        embedding=[rng.uniform(-1, 1) for _ in range(16)],
        metadata={"source": "test_dashboard_prometheus"},
    )


def _drive_load(target: str, seconds: float, rounds: int = 8) -> None:
    """Every RPC the dashboard plots, spread over a few scrapes, incl. caller errors."""
    rng = random.Random(5)
    with PatternStoreClient(target, timeout=10) as ps:
        started = time.monotonic()
        for r in range(rounds):
            batch = [_pattern(rng, f"load-{r}-{i}") for i in range(20)]
            ps.store_patterns(batch)
            single = ps.store_pattern(_pattern(rng, f"single-{r}"), durability=DURABILITY_QUEUED)
            # An update of an existing pattern, guarded by its version.
            ps.store_pattern(_pattern(rng, f"single-{r}"), expected_version=single.version)
            for p in batch[:10]:
                ps.get_pattern(p.id)  # recently stored: the L1 tier should serve these
            with pytest.raises(grpc.RpcError) as missing:
                ps.get_pattern(f"never-stored-{r}")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            ps.get_patterns([p.id for p in batch[10:]] + [f"never-stored-{r}"])
            ps.update_confidence(batch[0].id, rng.choice(_OUTCOMES), request_id=f"load-{r}")
            ps.update_confidence_batch(update_request(p.id, rng.choice(_OUTCOMES)) for p in batch)
            ps.record_outcomes(update_request(p.id, rng.choice(_OUTCOMES)) for p in batch[:5])
            ps.query_patterns(rng.choice(_TYPES), order_by="lower_bound", limit=10)
            ps.query_patterns(consistency=CONSISTENCY_STRONG, limit=50)
            ps.delete_pattern(batch[-1].id)
            ps.flush()
            ps.get_stats()
            # Spread the rounds so consecutive scrapes see the counters move.
            time.sleep(max(0.0, started + (r + 1) * seconds / rounds - time.monotonic()))


# -- the test --------------------------------------------------------------------------------


def _is_drawable(samples: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in samples)


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_every_dashboard_expression_returns_series(tmp_path: Path, path: Path) -> None:
    required_binary("prometheus")
    dashboard = json.loads(path.read_text())
    exprs = dashboard_exprs(dashboard)
    assert exprs, f"{path.name} has no PromQL targets"

    began = time.time()
    server = ServerProcess(tmp_path / "data", "--metrics-listen", "127.0.0.1:0")
    prom: Prometheus | None = None
    try:
        assert server.metrics_port is not None
        prom = Prometheus(_scrape_config(f"127.0.0.1:{server.metrics_port}"), tmp_path / "prom")
        # A baseline scrape before the load, so rate() sees every counter move.
        _wait_until(lambda: _scraped_after(prom, began), 15, "the first scrape")
        _drive_load(server.target, seconds=3 * SCRAPE_S)
        load_end = time.time()
        # Two scrapes after the load: the final counter values are in, and the last two
        # samples bracket the end of the load.
        _wait_until(lambda: _scraped_after(prom, load_end + SCRAPE_S), 15, "two scrapes")

        # A window that covers everything since the server started, rounded up.
        variables = _variables(dashboard, math.ceil(time.time() - began) + 2 * SCRAPE_S)
        results: list[str] = []
        empty: list[str] = []
        for where, raw in exprs:
            expr = substitute(raw, variables)
            try:
                samples = prom.query(expr)
            except ValueError as exc:
                empty.append(f"{where}: error {exc}\n    {expr}")
                continue
            values = sorted({s["value"][1] for s in samples})
            results.append(f"{where}: {len(samples)} series {values[:6]}")
            if not samples:
                empty.append(f"{where}: no series\n    {expr}")
            elif not _is_drawable(samples):
                empty.append(f"{where}: only NaN ({len(samples)} series)\n    {expr}")
        # Shown with -rA / on failure: what each panel would draw.
        print("\n".join(results))
        assert not empty, (
            f"{len(empty)} of {len(exprs)} dashboard expressions would draw nothing:\n"
            + "\n".join(empty)
            + f"\ntargets: {json.dumps(prom.targets(), default=str)[:2000]}"
        )
    finally:
        if prom is not None:
            prom.close()
        server.close()


def test_substitute_grafana_variables() -> None:
    variables = {"__rate_interval": "9s", "instance": ".*"}
    assert (
        substitute('rate(x{instance=~"$instance"}[$__rate_interval])', variables)
        == 'rate(x{instance=~".*"}[9s])'
    )
    assert substitute("rate(x[${__rate_interval}]) [[instance]]", variables) == "rate(x[9s]) .*"
    with pytest.raises(KeyError, match="unknown Grafana variable"):
        substitute("rate(x[$typo])", variables)
