"""Processes the benchmarks start: a patternstore server or a baseline, waited for by log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Proc", "start_patternstore"]

_SERVING = re.compile(r"patternstore serving grpc=[^ ]*:(\d+) metrics=(?:[^ ]*:(\d+)|-)")


class Proc:
    """A subprocess whose log is a file; ready once ``ready`` matches a line of it."""

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

    @property
    def pid(self) -> int:
        return self.proc.pid

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
                self.proc.wait(10)
        self._f.close()


def start_patternstore(work: Path, *flags: str, name: str = "server") -> tuple[Proc, str, int]:
    """A fresh server on free ports over ``work/name``; (process, target, metrics port or 0)."""
    proc = Proc(
        [
            sys.executable,
            "-m",
            "patternstore_server",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(work / name),
            *flags,
        ],
        _SERVING,
        work / f"{name}.log",
    )
    return proc, f"127.0.0.1:{proc.match[1]}", int(proc.match[2] or 0)
