"""Files written whole or not at all: stored originals, the follow cursor, the C-STORE spool."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from index.storage import fsync_path


def write_atomically(path: Path, data: bytes, *, midway: Callable[[], None] | None = None
                     ) -> None:
    """``data`` at ``path`` whole or not at all, and durable on return: a temporary file
    beside it, fsync'd, renamed over it, then the directory fsync'd (a crash leaves at most
    a ``.tmp-*`` file, which readers skip). ``midway`` runs between the two halves of the
    write: the test-only fault hook's place for a disk that fills mid-file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
            if midway is not None:
                midway()
            f.write(data[len(data) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself, not only the file
