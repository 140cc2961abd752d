"""Small helpers shared by the sections: timing, statistics, ports, process control."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); no interpolation between two latencies."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return float(ordered[rank - 1])


def timed_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def free_port() -> int:
    """A currently free loopback port (the OS picks; a tiny race with other users is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> float:
    """1-minute load average: recorded beside timings as a contention hint."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def rss_bytes(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, from /proc (Linux); empty elsewhere."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def stop_process(proc: subprocess.Popen[Any], name: str, timeout: float = 30.0) -> None:
    """SIGTERM (graceful: the service snapshots its index), then SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0fs; killing it", name, timeout)
        proc.kill()
        proc.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def round_floats(obj: Any, digits: int = 4) -> Any:
    """Rounds floats in nested JSON-like data for a readable results.json."""
    if isinstance(obj, float):
        return round(obj, digits) if obj == obj else None  # NaN -> null
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj


@contextlib.contextmanager
def thread_limit(torch_threads: int | None = None, faiss_threads: int | None = None
                 ) -> Iterator[None]:
    """Temporarily cap torch's and/or FAISS's OpenMP threads (each wheel has its own
    runtime), restoring the previous counts."""
    import faiss
    import torch

    old_t, old_f = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if faiss_threads is not None:
            faiss.omp_set_num_threads(faiss_threads)
        yield
    finally:
        torch.set_num_threads(old_t)
        faiss.omp_set_num_threads(old_f)
