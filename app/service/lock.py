"""``DATA_DIR/.lock``: one process at a time may serve or bulk-index a data directory.

``fcntl.flock`` is released by the kernel when the process dies, so a crash never leaves
a stale lock behind (unlike a pid file checked by hand).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

LOCK_FILE = ".lock"


class DataDirLocked(ValueError):
    """Another process holds the data directory."""


class DataDirLock:
    """Exclusive ``flock`` on a file of the data dir (``DATA_DIR/.lock`` by default: the
    one a serving/indexing process holds for its life), with the holder's pid in it."""

    def __init__(self, data_dir: Path, name: str = LOCK_FILE) -> None:
        self.path = Path(data_dir) / name
        self._fd: int | None = None
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take it if no other open file holds it; True if this object holds it now."""
        with self._guard:
            if self._fd is not None:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return True

    def holder(self) -> str:
        """The pid the holder wrote, or "?"."""
        try:
            return self.path.read_text(errors="replace").strip()[:32] or "?"
        except OSError:
            return "?"

    def acquire(self) -> DataDirLock:
        if not self.try_acquire():
            raise DataDirLocked(
                f"data directory {self.path.parent} is in use by another cbmir process "
                f"(pid {self.holder()}); stop it or set CBMIR_DATA_DIR to another directory"
            )
        return self

    def release(self) -> None:
        with self._guard:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
