"""uvicorn's supervisor of ``cbmir serve --workers N``, plus the bookkeeping the merged
metrics need when a worker leaves (:mod:`app.service.metrics`).

uvicorn offers no hook for a worker's death: :class:`Supervisor` compares its list of
workers before and after each step of the supervisor's loop that may change it (the
liveness check that replaces dead workers; the signals that restart or retire them) and
forgets the pids that left it. Each of those steps joins a worker before dropping it, so
a pid forgotten is a process that has ended.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from socket import socket

from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from app.service.metrics import forget_worker

log = logging.getLogger(__name__)


class Supervisor(Multiprocess):
    def __init__(self, config: Config, sockets: list[socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _forget_gone(self, before: set[int]) -> None:
        for pid in sorted(before - self._pids()):
            forget_worker(pid, self.metrics_dir)
            log.debug("worker %d left: its live gauges no longer count", pid)

    @contextlib.contextmanager
    def _forgetting_the_gone(self) -> Iterator[None]:
        before = self._pids()
        try:
            yield
        finally:
            self._forget_gone(before)

    def keep_subprocess_alive(self) -> None:
        with self._forgetting_the_gone():
            super().keep_subprocess_alive()

    def handle_signals(self) -> None:
        with self._forgetting_the_gone():
            super().handle_signals()
