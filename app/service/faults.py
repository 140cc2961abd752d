"""Test-only fault injection: named points where the service can be made to fail on purpose.

``CBMIR_TEST_FAULTS`` (:attr:`app.config.Settings.test_faults`) arms points for one
process, as a comma-separated list of ``point:action``; empty, the default, arms none and
every :meth:`Faults.hit` is a dictionary miss. Tests set it to turn "kill it while ..."
from a timing hope into a certainty; it is never set in production.

Points (where the code calls ``faults.hit(point)``):

``snapshot_write``
    Inside an index snapshot, once every file of the new snapshot is written and fsync'd
    under its temporary name, before it is renamed and published (``CURRENT`` still names
    the previous snapshot).

Actions:

``crash``
    SIGKILL the process on the spot: no shutdown code runs, exactly as ``kill -9``.
``fail``
    Raise :class:`InjectedFault` (an ``OSError``, as a failing disk would) at the point.

A new point is one entry in :data:`POINTS` and one ``hit`` call where it happens.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

POINTS: dict[str, str] = {
    "snapshot_write": "an index snapshot written in full but not yet published",
}
ACTIONS = ("crash", "fail")


class InjectedFault(OSError):
    """The failure a ``fail`` action raises."""


@dataclass(frozen=True)
class Faults:
    armed: Mapping[str, str] = field(default_factory=dict)  # point -> action

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Faults:
        """``["snapshot_write:crash", ...]`` → armed points; a one-line ``ValueError`` for an
        unknown point or action (a typo must not leave a test silently unarmed)."""
        armed: dict[str, str] = {}
        for entry in entries:
            point, _, action = entry.strip().partition(":")
            if point not in POINTS:
                raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
            if action not in ACTIONS:
                raise ValueError(
                    f"fault {entry.strip()!r} needs an action: {point}:{' or :'.join(ACTIONS)}"
                )
            armed[point] = action
        return cls(armed)

    def hit(self, point: str) -> None:
        """Do what ``point`` is armed with, if anything."""
        assert point in POINTS, point
        action = self.armed.get(point)
        if action is None:
            return
        log.warning("test fault: %s at %s", action, point)
        if action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(errno.EIO, f"injected fault at {point}")


NO_FAULTS = Faults()
