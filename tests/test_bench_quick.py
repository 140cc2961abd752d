"""Smoke test of the performance suite: ``python -m bench.run --quick`` writes its reports.

Runs in-process against the tiny test model (so it never depends on the trained one) and
real subprocesses (the service, the HTTP floor, the memory probe). About 30-40 s on two
busy cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plan import SECTIONS
from bench.run import run

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"


@pytest.mark.skipif(not DEMO.is_dir(), reason=f"no demo images in {DEMO}: nothing to serve")
def test_quick_bench_writes_reports(tiny_model: Path, tmp_path: Path) -> None:
    run(["--quick", "--out", str(tmp_path), "--model-dir", str(tiny_model)])

    data = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "plan", "images", "sections", "targets", "notes", "wall_s"} <= set(data)
    assert {"cpu_model", "cores_usable", "torch", "faiss", "numpy", "device", "date",
            "command"} <= set(data["machine"])
    sections = data["sections"]
    assert set(sections) == set(SECTIONS)
    assert not {k: v["error"] for k, v in sections.items() if "error" in v}
    assert sections["matmul"]["gflops_median"] > 0
    assert [r["batch"] for r in sections["embedder"]["by_batch"]] == [1, 8, 32, 256]
    size = sections["search"]["by_size"][0]
    assert size["n"] == 10_000 and {"flat", "ivf"} <= set(size["by_kind"])
    assert size["by_kind"]["flat"]["predicted"]["recall_at_k"] == 1.0
    svc = sections["service"]
    assert [r["concurrency"] for r in svc["levels"]] == [1, 4]
    assert all(r[name]["requests"] > 0 and r[name]["errors"] == 0
               for r in svc["levels"] for name in ("service", "floor"))
    assert svc["ingest_http"]["added"] > 0 and svc["ingest_http"]["duplicates"] == 0
    assert svc["ingest_local"]["added"] > 0
    assert sections["scale"]["probe"]["items"] == 10_000
    assert {t["id"] for t in data["targets"]} >= {
        "search_vs_pipeline", "p50_vs_floor", "rps_vs_floor", "index_vs_local",
        "embedder_256_rate", "embedder_256_fraction", "scale_search_ivf", "scale_rss"}

    md = (tmp_path / "RESULTS.md").read_text()
    for heading in ("# cbmir performance results", "## Targets", "## In-process ceilings",
                    "## Index search", "## Service vs HTTP floor", "## Scale"):
        assert heading in md
