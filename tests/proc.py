"""Run patternstore-server as a real subprocess (for crash and signal tests)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_SERVING = re.compile(r"patternstore serving grpc=[^ ]*:(\d+) metrics=(\S+)")
# Logged once the port is bound, before the pattern memory loads (calls get UNAVAILABLE).
_LOADING = re.compile(r"patternstore loading grpc=[^ ]*:(\d+) metrics=(\S+)")


def server_command() -> list[str]:
    exe = shutil.which("patternstore-server", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "patternstore_server"]


class ServerProcess:
    """A server subprocess; args are extra flags (a later flag wins over the defaults).

    ``command`` runs another installation (e.g. a fresh venv's ``patternstore-server``).
    ``metrics_port`` is the /metrics port the server logged, or None when disabled: pass
    ``"--metrics-listen", "127.0.0.1:0"`` to enable it. ``loading=True`` returns as soon
    as the port is bound, while the server still loads its pattern memory.
    """

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        command: Sequence[str] | None = None,
        loading: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(command or server_command()),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "",
                "--data-dir",
                str(data_dir),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port, self.metrics_port = self._wait_for(_LOADING if loading else _SERVING)
        self.target = f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Wait until the server has loaded its memory and serves."""
        self._wait_for(_SERVING, timeout)

    @property
    def serving(self) -> bool:
        return _SERVING.search(self.log()) is not None

    def _wait_for(self, line: re.Pattern[str], timeout: float = 30.0) -> tuple[int, int | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = line.search(self.log())
            if match:
                # metrics= is host:port, or "-" when the side port is disabled.
                metrics = match[2]
                return int(match[1]), None if metrics == "-" else int(metrics.rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not log {line.pattern!r}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill9()
        self._log.close()
