"""The machine a run happened on, and its fp32 matmul ceiling (the yardstick for the CNN)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.common import loadavg, median, timed_repeats

log = logging.getLogger(__name__)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_info(command: str) -> dict[str, Any]:
    import faiss
    import numpy as np

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "loadavg_at_start": loadavg(),
        "command": command,
    }


def matmul_ceiling(n: int = 2048, repeats: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Median GFLOP/s of an n×n fp32 matmul on all torch threads: what the CPU can do."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
    out = torch.empty(n, n)
    times = timed_repeats(lambda: torch.mm(a, b, out=out), repeats, warmup)
    flops = 2.0 * n**3
    gflops = [flops / t / 1e9 for t in times]
    result = {"n": n, "threads": torch.get_num_threads(), "repeats": repeats,
              "gflops_median": median(gflops), "gflops_max": max(gflops)}
    log.info("matmul %d²: %.1f GFLOP/s (median of %d, max %.1f)", n, result["gflops_median"],
             repeats, result["gflops_max"])
    return result
