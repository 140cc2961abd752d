"""The service's metrics merged across processes, as under ``cbmir serve --workers N``
(prometheus_client's multiprocess mode), without a server: real child processes, started
with ``PROMETHEUS_MULTIPROC_DIR`` as the supervisor's workers are, write into one directory
and another renders. Counters and histograms summed (an ended process's kept); each gauge
by its mode; the live gauges of a process the supervisor forgot dropped; another worker's
function gauges copied in the background. And a process started without the directory
keeps one registry per app, as with one process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.service.metrics import MULTIPROC_ENV, Metrics, forget_worker

ROOT = Path(__file__).resolve().parents[1]

# One "worker": counts `requests` GETs of /health, follows gauges reading `values`, changes
# them to `later` (if any) and waits `wait_s`, renders if asked; prints its pid, then what
# it rendered. Its files stay when it ends, as a killed worker's do.
WORKER = """
import json, os, sys, time
from app.service.metrics import Metrics, start_worker_metrics
start_worker_metrics()
v = json.loads(sys.argv[1])
m = Metrics(multiprocess=True)
assert m.multiprocess
for _ in range(v["requests"]):
    m.requests.labels("GET", "/health", "200").inc()
    m.latency.labels("GET", "/health").observe(0.02)
m.track(lambda: v["size"], lambda: v["queue"], snapshot_age=lambda: v["age"])
m.track_decode(lambda: (v["bytes"], v["peak"]))
v.update(v.get("later", {}))
time.sleep(v.get("wait_s", 0))
print(os.getpid())
if v.get("render"):
    sys.stdout.write(m.render().decode())
"""


def _worker(directory: Path, **values: Any) -> tuple[int, dict[str, float]]:
    """Run one worker; its pid and, if it rendered, the samples it reported."""
    v = {"requests": 0, "size": 0, "queue": 0, "age": 0.0, "bytes": 0, "peak": 0, **values}
    env = {**os.environ, MULTIPROC_ENV: str(directory),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(v)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid, _, text = r.stdout.partition("\n")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert "pid" not in s.labels  # no mode that splits a gauge by process
            key = s.name + "".join(f"|{k}={s.labels[k]}" for k in sorted(s.labels))
            samples[key] = s.value
    return int(pid), samples


def test_a_scrape_merges_every_worker(tmp_path: Path) -> None:
    a, _ = _worker(tmp_path, requests=3, size=5, queue=2, age=30.0, bytes=100, peak=400)
    b, _ = _worker(tmp_path, requests=4, size=7, queue=1, age=10.0, bytes=50, peak=300)
    _, seen = _worker(tmp_path, requests=1, size=9, age=20.0, render=True)
    assert a != b  # two processes, two sets of files
    health = "|method=GET|route=/health"
    assert seen["cbmir_http_requests_total" + health + "|status=200"] == 8  # summed
    assert seen["cbmir_http_request_duration_seconds_count" + health] == 8
    assert seen["cbmir_http_request_duration_seconds_bucket|le=0.025" + health] == 8
    assert seen["cbmir_index_size"] == 9  # the answering worker's, set as it renders
    assert seen["cbmir_batch_queue_images"] == 3  # 2 + 1 + 0
    assert seen["cbmir_decode_reserved_bytes"] == 150
    assert seen["cbmir_decode_reserved_bytes_peak"] == 400  # the most of any one worker
    assert seen["cbmir_snapshot_age_seconds"] == 20  # the answering worker's, like its size

    # Worker `a` died and the supervisor forgot it: its live gauges no longer count, its
    # counters and its peak do.
    forget_worker(a, tmp_path)
    assert not list(tmp_path.glob(f"gauge_live*_{a}.db"))
    _, seen = _worker(tmp_path, size=9, age=25.0, render=True)
    assert seen["cbmir_http_requests_total" + health + "|status=200"] == 8
    assert seen["cbmir_batch_queue_images"] == 1
    assert seen["cbmir_decode_reserved_bytes"] == 50
    assert seen["cbmir_decode_reserved_bytes_peak"] == 400
    assert seen["cbmir_index_size"] == 9
    assert seen["cbmir_snapshot_age_seconds"] == 25


def test_a_worker_that_is_not_scraped_keeps_its_gauges_current(tmp_path: Path) -> None:
    """A function gauge lives in one process: each worker copies its own into the shared
    files every REFRESH_S, so a scrape of another worker sees what waits now."""
    _worker(tmp_path, queue=0, later={"queue": 5, "bytes": 70}, wait_s=2.5)
    _, seen = _worker(tmp_path, render=True)
    assert seen["cbmir_batch_queue_images"] == 5
    assert seen["cbmir_decode_reserved_bytes"] == 70


def test_without_the_directory_each_app_keeps_its_own_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """This test process imported prometheus_client without the variable (one process, or
    several apps in one test process): ``multiprocess=True`` falls back, saying so."""
    with caplog.at_level(logging.WARNING, logger="app.service.metrics"):
        first, second = Metrics(multiprocess=True), Metrics()
    assert not first.multiprocess and "reports this worker alone" in caplog.text
    first.requests.labels("GET", "/health", "200").inc()
    first.track(lambda: 4, lambda: 0)
    assert b'cbmir_http_requests_total{method="GET",route="/health",status="200"} 1.0' \
        in first.render()
    assert b"cbmir_index_size 4.0" in first.render()
    assert b"cbmir_http_requests_total{" not in second.render()
