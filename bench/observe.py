"""Where a server's time goes during a load level: its CPU seconds (from /proc), the whole
machine's busy share, and deltas of the service's own Prometheus metrics (batch sizes,
forward-pass time, per-stage times)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# (metric, label filter) -> key; each has _sum and _count series
_SERIES = {
    "batch": ("cbmir_batch_size", ""),
    "forward": ("cbmir_model_inference_seconds", ""),
    "decode": ("cbmir_stage_seconds", 'stage="decode"'),
    "search": ("cbmir_stage_seconds", 'stage="search"'),
}


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(pid: int) -> float:
    """:func:`proc_cpu_s` of ``pid`` and all its live descendants (``--workers N``)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        cpu = proc_cpu_s(p)
        if cpu == cpu or p == pid:  # NaN: a child that ended meanwhile
            total += cpu
        todo.extend(parents.get(p, ()))
    return total


def machine_jiffies() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return values[3] + values[4], sum(values)


def scrape(url: str) -> dict[str, float]:
    """``<key>_sum`` and ``<key>_count`` of :data:`_SERIES` from a /metrics page."""
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"{url}/metrics", timeout=5.0).text
        for line in text.splitlines():
            for key, (name, label) in _SERIES.items():
                for part in ("sum", "count"):
                    if line.startswith(f"{name}_{part}") and label in line:
                        out[f"{key}_{part}"] = out.get(f"{key}_{part}", 0.0) + float(
                            line.rsplit(" ", 1)[1])
    return out


@dataclass
class Snapshot:
    cpu_s: float
    idle: int
    total: int
    metrics: dict[str, float]

    @classmethod
    def take(cls, pid: int, url: str | None) -> Snapshot:
        idle, total = machine_jiffies()
        return cls(tree_cpu_s(pid), idle, total, scrape(url) if url else {})


def delta(before: Snapshot, after: Snapshot, requests: int, seconds: float) -> dict[str, Any]:
    cpu = after.cpu_s - before.cpu_s
    total = after.total - before.total
    out: dict[str, Any] = {
        "cpu_cores": cpu / seconds if seconds else None,
        "cpu_ms_per_request": 1e3 * cpu / requests if requests else None,
        "machine_busy": 1 - (after.idle - before.idle) / total if total else None,
    }
    m0, m1 = before.metrics, after.metrics
    for key in _SERIES:
        n = m1.get(f"{key}_count", 0.0) - m0.get(f"{key}_count", 0.0)
        s = m1.get(f"{key}_sum", 0.0) - m0.get(f"{key}_sum", 0.0)
        if n > 0:
            out["mean_batch" if key == "batch" else f"{key}_ms"] = (
                s / n if key == "batch" else 1e3 * s / n)
    return out
