"""Sampling profile of the running service (py-spy, if installed) during a load run,
summarised by thread role: which part of the service uses the CPU, and on what."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import stop_process

log = logging.getLogger(__name__)

# Leaf frames of a thread that is waiting, not working (py-spy's own idle detection
# misses some of them).
_IDLE = ("Condition.wait", "Queue.get", "EpollSelector.select", "Event.wait", "sleep",
         "_wait_for_tstate_lock")
_ROLES = (("MicroBatcher._run", "batcher thread (CNN forward)"),
          ("Snapshotter", "snapshot thread"),
          ("WorkerThread.run", "thread pool (decode, search, SQLite)"),
          ("run_server", "event loop (HTTP, FastAPI, JSON)"))


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.is_file() else shutil.which("py-spy")


def start(pid: int, seconds: int, out: Path, rate: int = 100) -> subprocess.Popen[str] | None:
    exe = py_spy()
    if exe is None:
        return None
    # --nonblocking: never pause the service (sampling must not change what it measures).
    cmd = [exe, "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate), "-f", "raw",
           "-o", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """Waits for py-spy; returns its error output ('' when it worked)."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        stop_process(proc, "py-spy")
    return "" if proc.returncode == 0 else (err or "").strip()[-500:]


def _role(frames: list[str]) -> str:
    for marker, role in _ROLES:
        if any(marker in f for f in frames):
            return role
    return "other"


def summarize(raw: Path, rate: int, seconds: float, top: int = 12) -> dict[str, Any]:
    """Busy share per thread role (1.0 = one core for the whole run) and top leaf frames."""
    roles: Counter[str] = Counter()
    leaves: Counter[tuple[str, str]] = Counter()
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        if any(frames[-1].startswith(m) for m in _IDLE):
            idle += n
            continue
        role = _role(frames)
        roles[role] += n
        leaves[(role, frames[-1])] += n
    scale = rate * seconds
    return {
        "rate_hz": rate, "seconds": seconds, "idle_samples": idle,
        "roles": {r: n / scale for r, n in roles.most_common()},
        "top_frames": [{"role": r, "frame": f, "share": n / scale}
                       for (r, f), n in leaves.most_common(top)],
    }
