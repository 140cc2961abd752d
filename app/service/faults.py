"""Test-only fault injection: named points where the service can be made to fail on purpose.

``CBMIR_TEST_FAULTS`` (:attr:`app.config.Settings.test_faults`) arms points for one
process, as a comma-separated list of ``point:action[:n]``; empty, the default, arms none
and every :meth:`Faults.hit` is a dictionary miss. Tests set it to turn "kill it while ..."
from a timing hope into a certainty; it is never set in production.

Points (where the code calls ``faults.hit(point)``):

``snapshot_write``
    Inside an index snapshot, once every file of the new snapshot is written and fsync'd
    under its temporary name, before it is renamed and published (``CURRENT`` still names
    the previous snapshot).
``snapshot_hold``
    Inside an index snapshot, after the index was written out and its lock let go, while
    the files are fsync'd and hashed (the slow part that must not stall requests).
``batcher_crash``
    In the micro-batcher's worker thread, between taking a batch and running it, outside
    the guard around the forward pass: the worker thread dies holding that batch.
``index_add``
    In a write, after its rows are committed to SQLite, as the vectors go into the index.
``disk_full``
    While an uploaded original is being written (``fail`` raises ``ENOSPC`` there, after
    part of the temporary file is on disk).

Actions:

``crash``
    SIGKILL the process on the spot: no shutdown code runs, exactly as ``kill -9``.
``fail``
    Raise :class:`InjectedFault` (an ``OSError``, as a failing disk would) at the point.
``hold``
    Block the thread at the point for ``n`` seconds (default 10), then go on.

``n`` after ``crash`` or ``fail``: only the first ``n`` hits act, later ones pass (so
"the next request succeeds" can be tested); without it every hit acts.

A new point is one entry in :data:`POINTS` and one ``hit`` call where it happens.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

POINTS: dict[str, str] = {
    "snapshot_write": "an index snapshot written in full but not yet published",
    "snapshot_hold": "an index snapshot being fsync'd and hashed, outside the index lock",
    "batcher_crash": "the batcher's worker thread, holding a batch, outside its guard",
    "index_add": "a write's vectors going into the index after its rows committed",
    "disk_full": "an uploaded original half-written to its temporary file",
}
ACTIONS = ("crash", "fail", "hold")
_ERRNO = {"disk_full": errno.ENOSPC}


class InjectedFault(OSError):
    """The failure a ``fail`` action raises."""


@dataclass(frozen=True)
class Faults:
    armed: Mapping[str, str] = field(default_factory=dict)  # point -> action
    args: Mapping[str, float] = field(default_factory=dict)  # point -> n (hits, seconds)
    _hits: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Faults:
        """``["snapshot_write:crash", "index_add:fail:1", ...]`` → armed points; a one-line
        ``ValueError`` for an unknown point, action or count (a typo must not leave a test
        silently unarmed)."""
        armed: dict[str, str] = {}
        args: dict[str, float] = {}
        for entry in entries:
            point, _, rest = entry.strip().partition(":")
            action, _, n = rest.partition(":")
            if point not in POINTS:
                raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
            if action not in ACTIONS:
                raise ValueError(
                    f"fault {entry.strip()!r} needs an action: {point}:{' or :'.join(ACTIONS)}"
                )
            if n:
                try:
                    args[point] = float(n)
                except ValueError:
                    raise ValueError(f"fault {entry.strip()!r}: {n!r} is not a number") from None
            armed[point] = action
        return cls(armed, args)

    def hit(self, point: str) -> None:
        """Do what ``point`` is armed with, if anything."""
        assert point in POINTS, point
        action = self.armed.get(point)
        if action is None:
            return
        if action == "hold":
            seconds = self.args.get(point, 10.0)
            log.warning("test fault: hold %gs at %s", seconds, point)
            time.sleep(seconds)  # the point of the fault: this thread is stuck there
            return
        with self._lock:
            self._hits[point] = hits = self._hits.get(point, 0) + 1
        if point in self.args and hits > self.args[point]:
            return
        log.warning("test fault: %s at %s", action, point)
        if action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        code = _ERRNO.get(point, errno.EIO)
        raise InjectedFault(code, f"injected fault at {point}: {os.strerror(code)}")


NO_FAULTS = Faults()
