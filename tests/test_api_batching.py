"""MicroBatcher: requests share forward passes; a full queue answers 503 at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from conftest import png_bytes
from fastapi.testclient import TestClient

from app.api.errors import http_status
from app.config import Settings
from app.service.batcher import MicroBatcher, Overloaded
from models.embed import Embedding


class _Model:
    """Records batch sizes; the first call blocks until released (so work piles up)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, images: np.ndarray) -> Embedding:
        self.batches.append(len(images))
        self.started.set()
        assert self.release.wait(10)
        x = images.reshape(len(images), -1)[:, :2].astype(np.float32)
        return Embedding(x, x + 1)


def _images(n: int, value: int) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, dtype=np.uint8)


def test_waiting_jobs_share_one_batch_and_get_their_own_rows() -> None:
    model = _Model()
    # A long wait: every batch below fills up, so none of them waits for it.
    b = MicroBatcher(model, max_batch=6, wait_ms=10_000, max_queue=100)
    jobs = ((2, 1), (1, 2), (3, 3), (4, 4), (2, 5))
    try:
        first = b.submit(_images(6, 0))
        assert model.started.wait(10)
        futures = [b.submit(_images(n, v)) for n, v in jobs]
        model.release.set()
        assert first.result(10).vectors.shape == (6, 2)
        for f, (n, v) in zip(futures, jobs, strict=True):
            out = f.result(10)
            assert out.vectors.shape == (n, 2) and (out.vectors == v).all()
            assert (out.probabilities == v + 1).all()
        # 2+1+3 make one batch; the 4-image job does not fit and starts the next one.
        assert model.batches == [6, 6, 6]
    finally:
        model.release.set()
        b.close()


def test_overload_is_refused_immediately() -> None:
    model = _Model()
    b = MicroBatcher(model, max_batch=4, wait_ms=0, max_queue=4)
    try:
        b.submit(_images(1, 0))
        assert model.started.wait(10)
        b.submit(_images(3, 1))
        with pytest.raises(Overloaded) as e:
            b.submit(_images(2, 2))
        assert http_status(e.value) == (503, {"Retry-After": "1"})
    finally:
        model.release.set()
        b.close()


def test_errors_reach_every_waiting_request_and_close_drains() -> None:
    def boom(images: np.ndarray) -> Embedding:
        raise RuntimeError("model failed")

    b = MicroBatcher(boom, max_batch=8, wait_ms=1, max_queue=8)
    f = b.submit(_images(2, 0))
    with pytest.raises(RuntimeError, match="model failed"):
        f.result(10)
    b.close()
    with pytest.raises(Exception, match="shutting down"):
        b.submit(_images(1, 0))


def test_concurrent_searches_share_forward_passes(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight /search requests; the first one's forward pass is held until the other seven
    are queued (events, no sleeps): exactly two passes, of 1 and 7 images, and every
    request gets the answer it gets alone."""
    c = open_client(make_settings(batch_max_size=8, batch_wait_ms=0))
    batcher = c.app.state.loader.retriever.batcher  # type: ignore[attr-defined]
    blobs = [png_bytes(i) for i in range(8)]

    def query(data: bytes) -> dict[str, float]:
        r = c.post("/search", files={"file": ("q.png", data)}, params={"scope": "all"})
        assert r.status_code == 200, r.text
        probabilities: dict[str, float] = r.json()["prediction"]["probabilities"]
        return probabilities

    alone = [query(b) for b in blobs]
    sizes: list[int] = []
    first_running, all_queued = threading.Event(), threading.Event()
    submitted = 0
    embed, submit = batcher._embed, batcher.submit

    def counting_submit(images: np.ndarray) -> Future[Embedding]:
        nonlocal submitted
        future = submit(images)
        submitted += 1  # only from the event loop thread: no lock needed
        if submitted == len(blobs):
            all_queued.set()
        return future

    def held_embed(images: np.ndarray) -> Embedding:
        sizes.append(len(images))
        if len(sizes) == 1:
            first_running.set()
            assert all_queued.wait(30), "the other requests never reached the batcher"
        return embed(images)

    monkeypatch.setattr(batcher, "submit", counting_submit)
    monkeypatch.setattr(batcher, "_embed", held_embed)
    with ThreadPoolExecutor(len(blobs)) as pool:
        first = pool.submit(query, blobs[0])
        assert first_running.wait(30)
        rest = list(pool.map(query, blobs[1:]))
        together = [first.result(30), *rest]
    assert sizes == [1, 7]
    for got, want in zip(together, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    text = c.get("/metrics").text
    assert "cbmir_batch_size_count 10.0" in text and "cbmir_batch_size_sum 16.0" in text


def test_overload_answers_503_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    batcher = client.app.state.loader.retriever.batcher

    def full(images: np.ndarray) -> Future[Embedding]:
        raise Overloaded("server busy: 256 images waiting for the model, retry shortly")

    monkeypatch.setattr(batcher, "submit", full)
    r = client.post("/search", files={"file": ("q.png", png_bytes(1))})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"detail": "server busy: 256 images waiting for the model, retry shortly"}
