"""A real ``cbmir serve`` subprocess for tests: start on a free loopback port, wait for
``/health`` 200 within a deadline, SIGKILL or SIGTERM it, read its log.

The log goes to a file, not a pipe: a chatty server (an access-log line per request)
would block once an unread pipe's buffer filled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

CBMIR = str(Path(sys.executable).with_name("cbmir"))
START_TIMEOUT_S = 120.0
POLL_S = 0.1  # the interval of bounded polls, never a synchronisation guess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**values: str) -> dict[str, str]:
    """The test process's environment without any ``CBMIR_*``, plus test defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBMIR_")}
    return {**env, "CBMIR_SEED_DEMO": "false", "CBMIR_DEVICE": "cpu", **values}


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``condition()`` every ``POLL_S`` until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_S)


class ServerProc:
    """One ``cbmir serve`` process; may be started again (same env, new port) after a stop."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0
        self.start_seconds = 0.0  # spent waiting for /health, all starts together

    def start(self, wait: bool = True, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> ServerProc:
        """Start (again); ``env`` adds to the environment, ``args`` to the command line,
        for this start only."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = self.log_path.open("ab")
        log.write(f"\n=== start {self.starts + 1} on port {port} ===\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [CBMIR, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor
        self.starts += 1
        if wait:
            t0 = time.monotonic()
            self.wait_healthy()
            self.start_seconds += time.monotonic() - t0
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode  # negative: killed by that signal
                raise AssertionError(
                    f"server (start {self.starts}) exited early with status {code}; "
                    f"log:\n{self.log()[-4000:]}"
                )
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False  # not listening yet

        poll(healthy, timeout, f"{self.url}/health to answer 200")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no drain, no final snapshot)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end by itself; its status (negative: that signal)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful); returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
