"""POST /search, GET /images/{id}, DELETE /images/{id}."""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import CLASSES, demo_files, index_bytes, index_demo, png_bytes
from fastapi.testclient import TestClient
from PIL import Image


@pytest.fixture
def gallery(client: TestClient) -> list[dict[str, Any]]:
    """Two demo images per class, stored with their folder labels."""
    return index_demo(client, per_class=2)


def _search(client: TestClient, data: bytes, **params: Any) -> Any:
    r = client.post("/search", files={"file": ("q.jpeg", data)}, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_result_shape_and_self_match(client: TestClient, gallery: list[dict[str, Any]]) -> None:
    query = demo_files(per_class=2)[5]  # the second CXR image
    body = _search(client, query.read_bytes(), scope="all", k=3)
    pred = body["prediction"]
    assert pred["label"] in CLASSES
    assert set(pred["probabilities"]) == set(CLASSES)
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4
    assert pred["confidence"] == max(pred["probabilities"].values())
    assert body["scope"] == "all" and isinstance(body["took_ms"], float)
    results = body["results"]
    assert len(results) == 3
    top = results[0]
    assert top["id"] == gallery[5]["id"] and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["label"] == "CXR"
    assert top["image_url"] == f"/images/{top['id']}"
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_scopes(client: TestClient, gallery: list[dict[str, Any]]) -> None:
    data = demo_files(per_class=1)[0].read_bytes()
    body = _search(client, data)  # default: predicted class only
    assert body["scope"] == "predicted"
    predicted = body["prediction"]["label"]
    assert body["results"] and all(r["label"] == predicted for r in body["results"])
    body = _search(client, data, label="Hand", k=50)
    assert body["scope"] == "label"
    assert [r["label"] for r in body["results"]] == ["Hand", "Hand"]
    assert len(_search(client, data, scope="all", k=1000)["results"]) == 12


def test_search_rejects_bad_parameters(client: TestClient) -> None:
    files = {"file": ("q.png", png_bytes(1))}
    for params in ({"k": 0}, {"k": 1001}, {"k": "ten"}, {"scope": "everything"},
                   {"label": "Liver"}):
        r = client.post("/search", files=files, params=params)
        assert r.status_code == 422, (params, r.text)
        assert isinstance(r.json()["detail"], str)
    assert client.post("/search", files={"image": ("q.png", png_bytes(1))}).status_code == 422
    assert client.post("/search", files={"file": ("q.png", b"")}).status_code == 422
    assert client.post("/search", files={"file": ("q.png", b"%PDF-1.4")}).status_code == 415


def test_empty_gallery_gives_no_results(client: TestClient) -> None:
    assert _search(client, png_bytes(1), scope="all")["results"] == []


def test_images_png_and_original(client: TestClient) -> None:
    jpeg = demo_files(per_class=1)[2].read_bytes()
    (item,) = index_bytes(client, [jpeg])
    r = client.get(f"/images/{item['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    r = client.get(f"/images/{item['id']}", params={"original": "true"})
    assert r.headers["content-type"] == "image/jpeg" and r.content == jpeg


@pytest.mark.parametrize("path", ["/images/999", "/images/0", "/images/-1",
                                  "/images/99999999999999999999999", "/images/abc",
                                  "/images/..%2F..%2Fcbmir.sqlite3", "/images/1.5"])
def test_unknown_or_malformed_ids(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert r.headers["content-type"] == "application/json"


def test_delete(client: TestClient) -> None:
    a, b = index_bytes(client, [png_bytes(1), png_bytes(2)])
    assert client.delete(f"/images/{a['id']}").status_code == 204
    assert client.get(f"/images/{a['id']}").status_code == 404
    assert client.delete(f"/images/{a['id']}").status_code == 404
    ids = [r["id"] for r in _search(client, png_bytes(1), scope="all")["results"]]
    assert ids == [b["id"]]
    # Ids are never reused, and the same bytes can come back (as a new item).
    (again,) = index_bytes(client, [png_bytes(1)])
    assert again["id"] == 3 and again["duplicate"] is False
