"""Deployment files, checked without a Docker engine (none runs on our machines).

- docker-compose.yml parses, binds ports on 127.0.0.1 only and references files that exist;
- deploy/prometheus/prometheus.yml passes ``promtool check config``;
- the Grafana provisioning and dashboard JSON agree with each other and with compose;
- the Dockerfile's two pip steps, replayed on the build context its COPY lines and
  .dockerignore select, give a fresh venv whose server starts, answers, and drains.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from patternstore import (
    DURABILITY_QUEUED,
    Pattern,
    PatternStoreClient,
    UpdateConfidenceRequest,
    update_request,
)
from prometheus_client.parser import text_string_to_metric_families

from .conftest import self_signed_cert
from .proc import ServerProcess
from .test_dashboard_prometheus import dashboard_exprs, dashboards, iter_panels, required_binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# The Dockerfile's pip steps, as they appear there (the test checks that) and as this
# test replays them with local paths for /wheels and /opt/patternstore.
BUILD_STEP = "python -m pip wheel --wheel-dir /wheels ."
INSTALL_STEP = "pip install --no-index --find-links /wheels patternstore"
DOCKER_STOP_TIMEOUT_S = 10  # docker stop's default before SIGKILL


# -- docker-compose.yml --------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host path, container path) of every bind mount; named volumes are skipped."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith((".", "/", "~")):
            yield source, target


def test_compose_has_the_three_services() -> None:
    services = _compose()["services"]
    assert {"patternstore", "prometheus", "grafana"} <= set(services)
    assert services["patternstore"]["build"] in (".", {"context": "."})


def test_compose_references_only_files_that_exist() -> None:
    compose = _compose()
    missing = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            if not (ROOT / context / (dockerfile or "Dockerfile")).is_file():
                missing.append(f"{name}: build {context}/{dockerfile}")
        for source, _ in _bind_mounts(service):
            if not (ROOT / source).exists():
                missing.append(f"{name}: volume {source}")
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            if not (ROOT / env_file).is_file():
                missing.append(f"{name}: env_file {env_file}")
    for kind in ("configs", "secrets"):
        for name, spec in (compose.get(kind) or {}).items():
            if "file" in spec and not (ROOT / spec["file"]).exists():
                missing.append(f"{kind} {name}: {spec['file']}")
    assert not missing, missing


def test_compose_ports_on_localhost_and_volumes_named() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            # Short syntax "127.0.0.1:9090:9090"; anything else would publish on 0.0.0.0.
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: port {port} is not bound on 127.0.0.1"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
    state_dirs = {
        v.split(":")[1] for v in compose["services"]["patternstore"]["volumes"] if ":" in v
    }
    assert "/data" in state_dirs, "the database must live on a named volume"


# -- Prometheus config ---------------------------------------------------------------------


def test_prometheus_config_passes_promtool() -> None:
    promtool = required_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    """Each alert fires on the series it is for, and only there (alerts_test.yml)."""
    promtool = required_binary("promtool")
    rules = PROMETHEUS_CONFIG.parent
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(
            [promtool, *args], cwd=rules, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = dict(_bind_mounts(compose["services"]["prometheus"]))
    assert mounts.get("./deploy/prometheus/alerts.yml") == "/etc/prometheus/alerts.yml"


def test_prometheus_scrapes_the_compose_service() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["patternstore"]["static_configs"] for t in sc["targets"]]
    # Inside the compose network the service name resolves; the port is the image's.
    metrics_port = _dockerfile_env()["PATTERNSTORE_METRICS_LISTEN"].rsplit(":", 1)[1]
    assert targets == [f"patternstore:{metrics_port}"]
    assert "patternstore" in _compose()["services"]


# -- Grafana ---------------------------------------------------------------------------------


def _grafana_mount(compose_path: str) -> str:
    """Where compose mounts a repository directory inside the grafana container."""
    for source, target in _bind_mounts(_compose()["services"]["grafana"]):
        if Path(source).resolve(strict=False) == (ROOT / compose_path).resolve():
            return target
    raise AssertionError(f"grafana does not mount {compose_path}")


def test_grafana_provisioning_matches_compose_and_dashboards() -> None:
    assert _grafana_mount("deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    datasources = [
        ds
        for path in sorted((PROVISIONING / "datasources").glob("*.yml"))
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1, datasources
    assert prometheus[0]["url"] == "http://prometheus:9090"
    providers = [
        p
        for path in sorted((PROVISIONING / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(path.read_text())["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [
        _grafana_mount("deploy/grafana/dashboards")
    ]
    # Every panel names the provisioned datasource by uid, so no import step is needed.
    uid = prometheus[0]["uid"]
    for path in dashboards():
        for panel in iter_panels(json.loads(path.read_text())["panels"]):
            if panel.get("type") != "row":
                assert panel["datasource"]["uid"] == uid, (path.name, panel.get("title"))


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_has_grafana_schema_essentials(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "schemaVersion"):
        assert dashboard.get(key), f"{path.name}: no {key}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), "Grafana uids: <= 40 chars"
    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in iter_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        where = f"{path.name} panel {panel.get('title')!r}"
        assert panel.get("title") and panel.get("type"), where
        assert {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})), f"{where}: gridPos"
        datasource = panel.get("datasource")
        assert isinstance(datasource, dict), f"{where}: datasource"
        assert datasource.get("type") == "prometheus" and datasource.get("uid"), where
        assert panel.get("targets"), f"{where}: no targets"
        ref_ids = [t.get("refId") for t in panel["targets"]]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), f"{where}: refIds {ref_ids}"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{where} {target.get('refId')}: no expr"
    # The panels the issue asks for, by the metrics they must read.
    exprs = " ".join(expr for _, expr in dashboard_exprs(dashboard))
    for metric in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "patternstore_cache_hits_total",
        "patternstore_cache_misses_total",
        "patternstore_queue_depth",
        "patternstore_commit_seconds_bucket",
        "patternstore_wal_bytes",
        "patternstore_items_committed_total",
        "patternstore_outcomes_total",
    ):
        assert metric in exprs, f"{path.name}: no panel reads {metric}"
    assert exprs.count("histogram_quantile(") >= 3


# -- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_dockerfile_essentials() -> None:
    instructions = _dockerfile_instructions()
    args = {k: [a for kk, a in instructions if kk == k] for k, _ in instructions}
    bases = [a.split()[0] for a in args["FROM"]]
    assert len(bases) >= 2 and all(b == "python:3.11-slim" for b in bases), bases
    assert any(BUILD_STEP in a for a in args["RUN"]), f"Dockerfile lost {BUILD_STEP!r}"
    assert any(INSTALL_STEP in a for a in args["RUN"]), f"Dockerfile lost {INSTALL_STEP!r}"
    user = args["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the server must not run as root"
    assert args["VOLUME"] == ["/data"]
    assert set(args["EXPOSE"][-1].split()) == {"50051", "9464"}
    assert args["STOPSIGNAL"] == ["SIGTERM"]
    assert "/readyz" in _healthcheck_command()[-1]
    env = _dockerfile_env()
    assert env["PATTERNSTORE_LISTEN"] == "0.0.0.0:50051"
    assert env["PATTERNSTORE_METRICS_LISTEN"] == "0.0.0.0:9464"
    assert env["PATTERNSTORE_DATA_DIR"] == "/data"
    # In-flight calls get GRACE_S, then the queue is committed and the WAL checkpointed:
    # leave that tail room inside docker stop's timeout.
    assert float(env["PATTERNSTORE_GRACE_S"]) <= DOCKER_STOP_TIMEOUT_S - 2


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, in order (the last match decides)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        excludes = not pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((excludes, re.compile(regex)))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    # Docker matches a path and each of its parent directories against every pattern.
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = excludes
    return ignored


def _copy_sources() -> list[str]:
    """Sources of the COPY lines that read the build context (not --from another stage)."""
    sources: list[str] = []
    for keyword, args in _dockerfile_instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        *srcs, dest = [a for a in args.split() if not a.startswith("--")]
        for src in srcs:
            # This test rebuilds the tree by path, so each COPY must keep the path.
            assert dest in ("./", src), f"COPY {src} {dest}: keep the context path"
            sources.append(src.rstrip("/"))
    return sources


def _build_context(dest: Path) -> None:
    """What `docker build .` would see in stage 1: COPY sources minus .dockerignore."""
    rules = _dockerignore_rules()
    for source in _copy_sources():
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, rules), f"COPY {source}: excluded by .dockerignore"
        paths = [ROOT / source]
        while paths:
            path = paths.pop()
            relative = path.relative_to(ROOT).as_posix()
            if _ignored(relative, rules):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                # COPY keeps symlinks as links (migrations/ is reached through one).
                target.symlink_to(os.readlink(path))
            elif path.is_dir():
                target.mkdir(exist_ok=True)
                paths.extend(path.iterdir())
            else:
                shutil.copy2(path, target)


def test_dockerignore_keeps_what_the_build_needs_and_drops_local_state() -> None:
    rules = _dockerignore_rules()
    for kept in ("pyproject.toml", "server/patternstore_server/server.py", "migrations"):
        assert not _ignored(kept, rules), kept
    for dropped in (".venv", ".git", "data", "tests", "server/patternstore_server/__pycache__"):
        assert _ignored(dropped, rules), dropped


# -- the Dockerfile's install steps in a fresh venv ------------------------------------------


def _run(cmd: list[str | Path], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def _clean_env() -> dict[str, str]:
    # Nothing from the dev venv may leak in: the fresh venv must stand on its own.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a new venv holding only the wheels the Dockerfile's stage 1 would build.

    Needs PyPI (or pip's cache) for setuptools and the dependencies' wheels, as the
    image build does.
    """
    base = tmp_path_factory.mktemp("docker-steps")
    context, wheels, venv = base / "context", base / "wheels", base / "venv"
    context.mkdir()
    _build_context(context)
    env = _clean_env()
    # Stage 1: BUILD_STEP, run in the context copy so nothing is written to the checkout.
    _run(
        [sys.executable, "-m", "pip", "wheel", "--wheel-dir", wheels, "."],
        300,
        cwd=context,
        env=env,
    )
    # Stage 2: a venv and INSTALL_STEP, offline, from those wheels only.
    _run([sys.executable, "-m", "venv", venv], 120, env=env)
    _run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            wheels,
            "patternstore",
        ],
        300,
        env=env,
    )
    return venv / "bin"


def test_fresh_venv_server_help_lists_the_image_settings(fresh_venv: Path) -> None:
    help_text = _run([fresh_venv / "patternstore-server", "--help"], 30, env=_clean_env()).stdout
    # Every PATTERNSTORE_* the image sets must be a setting the server reads (TARGET is
    # the CLI's, for `docker exec ... patternstore stats`).
    cli_help = _run([fresh_venv / "patternstore", "--help"], 30, env=_clean_env()).stdout
    # argparse wraps help lines anywhere, so compare with whitespace collapsed.
    documented = " ".join((help_text + cli_help).split())
    for name in _dockerfile_env():
        if name.startswith("PATTERNSTORE_"):
            assert f"env {name}" in documented, f"{name} is not a setting (--help)"


def test_fresh_venv_serves_and_drains(
    fresh_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image's environment (flags below still override the addresses and data dir).
    for name, value in _dockerfile_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    server = ServerProcess(
        tmp_path / "data",
        "--metrics-listen",
        "127.0.0.1:0",
        command=[str(fresh_venv / "patternstore-server")],
    )
    try:
        smoke = (
            "import sys, patternstore\n"
            "from patternstore import PatternStoreClient, Pattern\n"
            "with PatternStoreClient(sys.argv[1]) as ps:\n"
            "    ps.store_pattern(Pattern(id='smoke', type='plan', data=b'{}'))\n"
            "    ps.update_confidence('smoke', 'success')\n"
            "    p = ps.get_pattern('smoke')\n"
            "    assert p.success_count == 1, p\n"
            "print(patternstore.__file__)\n"
        )
        result = _run([fresh_venv / "python", "-c", smoke, server.target], 60, cwd=tmp_path)
        assert result.stdout.startswith(str(fresh_venv.parent)), "imported the dev checkout"
        stats = _run([fresh_venv / "patternstore", "--target", server.target, "stats"], 30)
        assert stats.stdout.strip()
        assert server.metrics_port is not None
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            metrics = response.read().decode()
        handled = {
            (s.labels["grpc_method"], s.labels["grpc_code"]): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if s.name == "grpc_server_handled_total"
        }
        assert handled[("StorePattern", "OK")] == 1, handled
        # docker stop: SIGTERM, then SIGKILL after 10 s; an idle server exits 0 well before.
        began = time.monotonic()
        assert server.terminate(timeout=DOCKER_STOP_TIMEOUT_S) == 0, server.log()
        assert time.monotonic() - began < DOCKER_STOP_TIMEOUT_S
    finally:
        server.close()


def _healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK CMD (exec form), as an argument list."""
    line = [a for k, a in _dockerfile_instructions() if k == "HEALTHCHECK"][-1]
    command: list[str] = json.loads(line.split("CMD", 1)[1])
    return command


def test_fresh_venv_runs_the_healthcheck(fresh_venv: Path, tmp_path: Path) -> None:
    """The image's HEALTHCHECK, run with the venv's python against a real server: 0 when
    ready, non-zero (not a hang) once nothing listens. With TLS on the gRPC port too: it
    reads /readyz over plain HTTP (the CLI's `health` failed certificate checks)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = self_signed_cert(certs, "patternstore", "server")
    server = ServerProcess(
        tmp_path / "data",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        command=[str(fresh_venv / "patternstore-server")],
    )
    python, *rest = _healthcheck_command()
    assert python == "python"
    command = [str(fresh_venv / "python")] + [
        a.replace(":9464/", f":{server.metrics_port}/") for a in rest
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"healthcheck exited {result.returncode}: {result.stderr}"
    finally:
        server.close()
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0


def test_fresh_venv_stops_within_docker_stop_timeout(
    fresh_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM with a stream that never ends: grace, cancel, commit, exit 0 before SIGKILL."""
    for name, value in _dockerfile_env().items():
        monkeypatch.setenv(name, value)
    # Queued writes wait for the drain: a batch would otherwise close only after 60 s.
    server = ServerProcess(
        tmp_path / "data",
        "--max-delay-ms",
        "60000",
        command=[str(fresh_venv / "patternstore-server")],
    )
    release = threading.Event()
    stream_errors: list[BaseException] = []

    def endless() -> Iterator[UpdateConfidenceRequest]:
        yield update_request("held", "success")
        release.wait(30)  # the client never half-closes: a call in flight at SIGTERM

    def hold_stream() -> None:
        try:
            with PatternStoreClient(server.target) as ps:
                ps.record_outcomes(endless(), timeout=30)
        except BaseException as exc:  # the server cancels it after the grace period
            stream_errors.append(exc)

    try:
        with PatternStoreClient(server.target) as ps:
            # QUEUED: a COMMITTED reply would wait for the 60 s batch.
            ps.store_pattern(Pattern(id="held", type="plan"), durability=DURABILITY_QUEUED)
            ps.store_pattern(Pattern(id="queued", type="plan"), durability=DURABILITY_QUEUED)
        holder = threading.Thread(target=hold_stream, daemon=True)
        holder.start()
        # The stream is in flight once its first outcome is applied (reads see it).
        with PatternStoreClient(server.target) as ps:
            deadline = time.monotonic() + 20
            while ps.get_pattern("held").usage_count < 1:
                assert time.monotonic() < deadline, "the stream never reached the server"
                time.sleep(0.02)
        began = time.monotonic()
        code = server.terminate(timeout=DOCKER_STOP_TIMEOUT_S + 5)
        took = time.monotonic() - began
        release.set()
        holder.join(10)
        print(f"SIGTERM to exit with a call in flight: {took:.2f} s")
        assert code == 0, server.log()
        grace = float(_dockerfile_env()["PATTERNSTORE_GRACE_S"])
        # It waited out the grace period for the stream, and was done before docker's SIGKILL.
        assert grace - 0.5 <= took < DOCKER_STOP_TIMEOUT_S, f"stopped in {took:.1f} s"
        assert stream_errors, "the endless stream should have been cancelled"
    finally:
        release.set()
        server.close()
    restarted = ServerProcess(tmp_path / "data", command=[str(fresh_venv / "patternstore-server")])
    try:
        with PatternStoreClient(restarted.target) as ps:
            assert ps.get_pattern("queued").id == "queued", "the drain lost a queued write"
    finally:
        restarted.close()
