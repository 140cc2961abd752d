"""Start, wait for and stop the real service (``cbmir serve``) and the HTTP floor app as
subprocesses on 127.0.0.1, logging to files."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, free_port, stop_process, tail

log = logging.getLogger(__name__)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[Any]
    port: int
    log_path: Path
    started: float  # perf_counter at spawn

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds from spawn to the first 200 from /health (503 while loading)."""
        deadline = time.perf_counter() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while "
                                       f"starting:\n{tail(self.log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return time.perf_counter() - self.started
                time.sleep(0.05)  # polling a subprocess: there is no event to wait on
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:.0f}s:\n"
                           f"{tail(self.log_path)}")


@contextlib.contextmanager
def _spawn(name: str, cmd: list[str], env: dict[str, str], log_dir: Path,
           port: int) -> Iterator[Server]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    server = Server(name, proc, port, log_path, time.perf_counter())
    log.info("started %s (pid %d) on port %d", name, proc.pid, port)
    try:
        yield server
    finally:
        stop_process(proc, name)


def service_env(model_dir: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CBMIR_MODEL_DIR": str(model_dir), "CBMIR_DATA_DIR": str(data_dir),
                "CBMIR_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"})
    env.update({f"CBMIR_{k.upper()}": v for k, v in settings.items()})
    return env


@contextlib.contextmanager
def service(model_dir: Path, data_dir: Path, log_dir: Path, name: str = "service",
            extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            **settings: str) -> Iterator[Server]:
    """``cbmir serve`` (as ``python -m app.cli serve``: no PATH needed) on a free port;
    ``settings`` become ``CBMIR_*`` variables, ``extra_env`` is added as is, ``args`` to
    the command line (``--workers N``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           *args]
    env = {**service_env(model_dir, data_dir, **settings), **(extra_env or {})}
    with _spawn(name, cmd, env, log_dir, port) as s:
        yield s


@contextlib.contextmanager
def floor(log_dir: Path) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.floor_app", "--port", str(port)]
    with _spawn("floor", cmd, dict(os.environ), log_dir, port) as s:
        yield s
