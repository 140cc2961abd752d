"""The service's work done in-process through the app's own code (no HTTP, no batcher
queue): the ceiling that /search and /index are compared with."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import load_settings
from app.service.retriever import Retriever
from app.service.search import Scope
from app.service.uploads import Upload, prepare_query
from bench.common import median
from bench.data import Img
from models.embed import Embedding

log = logging.getLogger(__name__)


def open_retriever(model_dir: Path, data_dir: Path) -> Retriever:
    """The retriever ``cbmir serve`` would build on ``data_dir`` (env settings apply)."""
    return Retriever.open(load_settings(model_dir=model_dir, data_dir=data_dir,
                                        seed_demo=False, device="cpu"))


def _search_batch(r: Retriever, blobs: list[bytes], k: int, scope: Scope) -> None:
    """decode + preprocess each, one forward pass for all, one index search + SQLite
    lookup per query (as each /search request does)."""
    arrays = np.stack([prepare_query(b, r.embedder, r.decoder) for b in blobs])
    emb = r.embedder.embed_prepared(arrays, batch_size=len(arrays))
    for i in range(len(arrays)):
        # Searcher.rank is the step the /search route runs after the model.
        r.searcher.rank(Embedding(emb.vectors[i : i + 1], emb.probabilities[i : i + 1]), k, scope,
                        None, arrays[i : i + 1])


def search_throughput(r: Retriever, query: bytes, batch_sizes: list[int], k: int, scope: Scope,
                      images: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for b in batch_sizes:
        n = max(b, images - images % b)
        _search_batch(r, [query] * b, k, scope)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n // b):
                _search_batch(r, [query] * b, k, scope)
            rates.append(n / (time.perf_counter() - t0))
        rate = median(rates)
        rows.append({"batch": b, "images_per_s": rate, "ms_per_image": 1e3 / rate})
        log.info("in-process pipeline batch %2d: %.0f img/s (%.2f ms/img)", b, rate, 1e3 / rate)
    return rows


def ingest_rate(r: Retriever, images: list[Img], batch: int) -> dict[str, Any]:
    """Retriever.ingest_sync (what POST /index runs: decode, embed, originals + SQLite
    commit, index add), ``batch`` files per call, one call at a time."""
    classes = r.classes
    added = 0
    t0 = time.perf_counter()
    for start in range(0, len(images), batch):
        ups = [Upload(im.data, im.name, im.label if im.label in classes else None)
               for im in images[start : start + batch]]
        added += sum(not it.duplicate for it in r.ingest_sync(ups))
    secs = time.perf_counter() - t0
    log.info("in-process ingest: %d images in %.1fs (%.0f img/s)", added, secs, added / secs)
    return {"added": added, "seconds": secs, "images_per_s": added / secs, "batch": batch}
