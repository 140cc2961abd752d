"""``DATA_DIR/.lock``: one process at a time may serve or bulk-index a data directory.

``fcntl.flock`` is released by the kernel when the process dies, so a crash never leaves
a stale lock behind (unlike a pid file checked by hand).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class DataDirLocked(ValueError):
    """Another process holds the data directory."""


class DataDirLock:
    """Exclusive ``flock`` on ``DATA_DIR/.lock`` for the life of a serving/indexing process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self.path.parent} is in use by another cbmir process "
                f"(pid {holder}); stop it or set CBMIR_DATA_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
