"""Subprocess probe: resident memory and load time of a process holding the model and a
saved index, as a fresh service process would (no re-embedding).
Run: ``python -m bench.probe MODEL_DIR INDEX_DIR``; prints one JSON line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    t0 = time.perf_counter()
    from bench.common import rss_bytes

    base = rss_bytes()["VmRSS"]
    import faiss  # noqa: F401  (import cost is part of start-up)

    from index import FaissIndex
    from models.embed import Embedder

    t_import = time.perf_counter()
    embedder = Embedder.load(sys.argv[1], "cpu")
    t_model = time.perf_counter()
    rss_model = rss_bytes()["VmRSS"]
    index = FaissIndex.load(Path(sys.argv[2]), model_fingerprint=embedder.config.fingerprint)
    t_index = time.perf_counter()
    mem = rss_bytes()
    sys.stdout.write(json.dumps({
        "items": len(index), "rss_interpreter": base, "rss_after_model": rss_model,
        "rss_after_index": mem["VmRSS"], "peak_rss": mem["VmHWM"],
        "import_s": t_import - t0, "model_load_s": t_model - t_import,
        "index_load_s": t_index - t_model,
    }) + "\n")


if __name__ == "__main__":
    main()
