"""One process owns a data directory: the server while it runs, a restore while it copies.

An advisory ``flock`` on ``patterns.db.lock`` beside the database. The kernel drops it
when the holder exits, kill -9 included, so a crash never leaves the directory locked.
Without it, `patternstore restore --force` replaced a running server's database under it
(the server went on acknowledging writes into unlinked files), and two servers could
share one file, each believing its own memory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "DataDirLock"]

LOCK_NAME = "patterns.db.lock"


class DataDirLock:
    def __init__(self, data_dir: str | os.PathLike[str], holder: str) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise OSError naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OSError(f"{self.path.parent} is in use by {held_by}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{self._holder} (pid {os.getpid()})\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Safe to call twice, or without acquire()."""
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
