"""/health (starting → ready, failed), /metrics, /docs, CORS and the catch-all 500."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models.checkpoint import save_checkpoint
from models.cnn import CbmirCNN
from models.embed import Embedder


def test_starting_until_loaded(make_settings: Callable[..., Settings],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    load = Embedder.load

    def held_load(model_dir: Path | str, device: str = "auto") -> Embedder:
        assert release.wait(30)
        return load(model_dir, device)

    monkeypatch.setattr(Embedder, "load", staticmethod(held_load))
    with TestClient(create_app(make_settings())) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "starting"}
        assert r.headers["retry-after"] == "1"
        r = c.post("/search", files={"file": ("q.png", png_bytes(1))})
        assert r.status_code == 503 and "starting" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        assert c.get("/metrics").status_code == 200
        release.set()
        wait_ready(c)


def test_health_when_ready(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == {"name": "tiny-test", "classes": CLASSES, "device": "cpu",
                             "embedding_dim": 16,
                             "ood": {"method": None, "threshold": None, "policy": "flag"}}
    assert body["index"]["backend"] == "faiss" and body["index"]["size"] == 0


def test_model_mismatch_is_refused(make_settings: Callable[..., Settings], tmp_path: Path,
                                   tiny_model: Path) -> None:
    with TestClient(create_app(make_settings())) as c:
        wait_ready(c)
        index_bytes(c, [png_bytes(1)])
    torch.manual_seed(1)
    other = CbmirCNN(in_channels=1, num_classes=6, widths=[8, 16], fc_dims=[32, 16]).eval()
    cfg = Embedder.load(tiny_model, "cpu").config
    save_checkpoint(other, cfg, tmp_path / "other-model")
    with TestClient(create_app(make_settings(model_dir=tmp_path / "other-model"))) as c2:
        assert c2.app.state.loader.done.wait(60)
        r = c2.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "CBMIR_DATA_DIR" in r.json()["detail"]


def test_metrics(client: TestClient) -> None:
    (item,) = index_bytes(client, [png_bytes(1)])
    client.post("/search", files={"file": ("q.png", png_bytes(2))})
    client.get(f"/images/{item['id']}")
    client.get("/images/12345")
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'cbmir_http_requests_total{method="POST",route="/search",status="200"} 1.0' in text
    assert 'cbmir_http_requests_total{method="POST",route="/index",status="200"} 1.0' in text
    assert 'route="/images/{item_id}",status="404"' in text  # the template, not the raw path
    assert 'route="unmatched",status="404"' in text and "12345" not in text
    assert 'cbmir_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert "cbmir_index_size 1.0" in text
    assert "cbmir_model_inference_seconds_count 2.0" in text
    assert "cbmir_batch_size_count 2.0" in text


def test_openapi_has_the_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("HealthResponse", "IndexResponse", "IndexedItem", "SearchResponse", "SearchHit",
                 "Prediction", "ErrorResponse"):
        assert name in schemas, name
    search = spec["paths"]["/search"]["post"]
    assert {p["name"] for p in search["parameters"]} == {
        "k", "scope", "label", "group_by", "exclude_study", "exclude_same_study"}
    assert "multipart/form-data" in search["requestBody"]["content"]
    assert "/images/{item_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_cors_off_by_default_and_on_when_set(
    client: TestClient, make_settings: Callable[..., Settings], tmp_path: Path,
    open_client: Callable[[Settings], TestClient],
) -> None:
    origin = {"Origin": "https://viewer.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    c = open_client(
        make_settings(cors_origins=["https://viewer.example"], data_dir=tmp_path / "d2")
    )
    r = c.get("/health", headers=origin)
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"


def test_unexpected_error_is_a_json_500(make_settings: Callable[..., Settings],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as c:
        wait_ready(c)
        retriever = c.app.state.loader.retriever

        def broken(item_id: int) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(retriever, "get", broken)
        monkeypatch.setattr(retriever, "original", broken)
        r = c.get("/images/1", params={"original": "true"})
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
