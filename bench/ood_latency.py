"""What the OOD check adds to one ``/search``: ``python -m bench.ood_latency``.

One app (the model, the seeded demo gallery), one client; requests alternate, in
A B B A order so that drifting machine load falls on both alike, between the service's
own OOD gate (policy ``flag``) and the same gate with policy ``off``, swapped in between
requests. Two apps side by side would differ by more than the score itself (±1 ms at
the medians on a loaded 2-core machine, measured A/A). Queries are in-distribution demo
images, so both search the predicted class and only the check differs. Also timed:
``Searcher.rank`` (everything /search does after the model) with each gate, and the
score alone. Writes JSON to ``--out`` (default: print only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.config import load_settings
from app.main import create_app
from app.service.uploads import prepare_query
from bench.common import loadavg, percentile
from models import DEFAULT_MODEL_DIR

log = logging.getLogger("bench.ood_latency")
DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"
ORDER = ("off", "flag", "flag", "off")


def _summary(t: dict[str, list[float]]) -> dict[str, Any]:
    diffs = [b - a for a, b in zip(t["off"], t["flag"], strict=True)]
    return {**{k: {"median": statistics.median(v), "p90": percentile(v, 90)}
               for k, v in t.items()},
            "added_median": statistics.median(t["flag"]) - statistics.median(t["off"]),
            "added_median_paired": statistics.median(diffs)}


def _alternate(n: int, call: Callable[[str, int], float]) -> dict[str, list[float]]:
    t: dict[str, list[float]] = {"off": [], "flag": []}
    for i in range(n):
        for name in ORDER[2 * (i % 2): 2 * (i % 2) + 2]:
            t[name].append(call(name, i))
    return t


def run(model: Path, requests: int) -> dict[str, Any]:
    queries = [p.read_bytes() for p in sorted(DEMO.glob("*/*.jpeg"))[::10]]
    with tempfile.TemporaryDirectory(prefix="cbmir-ood-bench-") as tmp:
        settings = load_settings(model_dir=model, data_dir=Path(tmp), device="cpu",
                                 ood_policy="flag", seed_demo=True, snapshot_seconds=3600)
        with TestClient(create_app(settings)) as c:
            assert c.app.state.loader.done.wait(300), "service did not load"  # type: ignore
            r = c.app.state.loader.retriever  # type: ignore[attr-defined]
            searcher, emb = r.searcher, r.embedder
            gates = {"flag": r.ood, "off": dataclasses.replace(r.ood, policy="off")}
            assert gates["flag"].checks, f"model {model} has no OOD calibration"

            def search(name: str, i: int) -> float:
                searcher.ood = gates[name]
                t0 = time.perf_counter()
                resp = c.post("/search", files={"file": ("q.jpeg", queries[i % len(queries)])},
                              params={"k": 10})
                took = (time.perf_counter() - t0) * 1e3
                assert resp.status_code == 200, resp.text
                return took

            arrays = [prepare_query(q, emb, r.decoder)[None] for q in queries]
            embs = [emb.embed_prepared(a) for a in arrays]

            def rank(name: str, i: int) -> float:
                searcher.ood = gates[name]
                j = i % len(arrays)
                t0 = time.perf_counter()
                searcher.rank(embs[j], 10, "predicted", None, arrays[j])
                return (time.perf_counter() - t0) * 1e3

            load0 = loadavg()
            _alternate(20, search)  # warm-up: traced model, FAISS, SQLite caches
            http = _alternate(requests, search)
            in_process = _alternate(5 * requests, rank)
            searcher.ood = gates["flag"]
            alone = []
            for i in range(2000):
                j = i % len(arrays)
                t0 = time.perf_counter()
                gates["flag"].assess(embs[j].vectors, arrays[j])
                alone.append((time.perf_counter() - t0) * 1e6)
    return {
        "model": str(model), "requests_per_policy": requests, "loadavg": [load0, loadavg()],
        "search_ms": _summary(http), "rank_ms": _summary(in_process),
        "score_alone_us": {"median": statistics.median(alone), "p90": percentile(alone, 90)},
        "note": "one in-process app (TestClient), one client, gate swapped between requests "
                "in A B B A order; in-distribution demo queries, k=10",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ood_latency", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--requests", type=int, default=400, help="per policy")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run(a.model, a.requests)
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    s, k = res["search_ms"], res["rank_ms"]
    log.warning("median /search: off %.2f ms, flag %.2f ms, added %.3f ms (paired %.3f); "
                "after the model: added %.3f ms (paired %.3f); score alone %.0f µs",
                s["off"]["median"], s["flag"]["median"], s["added_median"],
                s["added_median_paired"], k["added_median"], k["added_median_paired"],
                res["score_alone_us"]["median"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
