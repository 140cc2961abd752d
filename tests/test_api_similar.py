"""GET /images/{id}/similar: the /search answer for a stored image, itself left out."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import demo_files, index_demo
from fastapi.testclient import TestClient


@pytest.fixture
def gallery(client: TestClient) -> list[dict[str, Any]]:
    return index_demo(client, per_class=3)


def test_similar_matches_search_without_the_item(
    client: TestClient, gallery: list[dict[str, Any]]
) -> None:
    item = gallery[4]
    data = demo_files(per_class=3)[4].read_bytes()
    r = client.get(f"/images/{item['id']}/similar", params={"scope": "all", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    searched = client.post("/search", files={"file": ("q", data)},
                           params={"scope": "all", "k": 6}).json()
    assert set(body) == set(searched)
    assert body["prediction"]["label"] == searched["prediction"]["label"]
    assert body["prediction"]["probabilities"] == pytest.approx(
        searched["prediction"]["probabilities"], abs=1e-5)
    ids = [h["id"] for h in body["results"]]
    assert item["id"] not in ids and len(ids) == 5
    assert searched["results"][0]["id"] == item["id"]  # the search finds itself first ...
    assert ids == [h["id"] for h in searched["results"][1:]]  # ... and similar the rest
    assert body["results"][0]["label_source"] == "given"


def test_similar_scopes_and_k(client: TestClient, gallery: list[dict[str, Any]]) -> None:
    item = gallery[0]
    url = f"/images/{item['id']}/similar"
    body = client.get(url).json()
    assert body["scope"] == "predicted"
    assert {h["label"] for h in body["results"]} <= {body["prediction"]["label"]}
    body = client.get(url, params={"label": "Hand", "k": 50}).json()
    assert body["scope"] == "label" and [h["label"] for h in body["results"]] == ["Hand"] * 3
    assert len(client.get(url, params={"scope": "all", "k": 1000}).json()["results"]) == 17


@pytest.mark.parametrize("params", [{"k": 0}, {"k": 1001}, {"scope": "near"},
                                    {"label": "Liver"}])
def test_similar_bad_parameters(
    client: TestClient, gallery: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    r = client.get(f"/images/{gallery[0]['id']}/similar", params=params)
    assert r.status_code == 422, r.text


def test_similar_unknown_id_is_404(client: TestClient) -> None:
    r = client.get("/images/999/similar")
    assert r.status_code == 404 and r.json() == {"detail": "no image with id 999"}
