"""Run patternstore-server as a real subprocess (for crash and signal tests)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_SERVING = re.compile(r"patternstore serving grpc=[^ ]*:(\d+)")


def server_command() -> list[str]:
    exe = shutil.which("patternstore-server", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "patternstore_server"]


class ServerProcess:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *server_command(),
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
        self.port = self._wait_serving()
        self.target = f"127.0.0.1:{self.port}"

    def _wait_serving(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log())
            if match:
                return int(match[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not log that it serves:\n{self.log()}")

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
