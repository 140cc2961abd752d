"""GET /images (list, filters, cursor paging), GET /images/{id}/info, PATCH /images/{id}."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
from conftest import CLASSES, index_bytes, index_demo, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

KEY = "gallery-key"


@pytest.fixture
def gallery(client: TestClient) -> list[dict[str, Any]]:
    """Two demo images per class with their folder labels, then two predicted ones."""
    return [*index_demo(client, per_class=2), *index_bytes(client, [png_bytes(1), png_bytes(2)])]


def _list(client: TestClient, **params: Any) -> Any:
    r = client.get("/images", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_pages_walk_every_item_newest_first(
    client: TestClient, gallery: list[dict[str, Any]]
) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        body = _list(client, limit=5, **({"cursor": cursor} if cursor else {}))
        assert body["total"] == len(gallery)
        assert len(body["items"]) <= 5
        seen += [it["id"] for it in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == sorted((it["id"] for it in gallery), reverse=True)
    first = _list(client, limit=1)["items"][0]
    assert set(first) == {"id", "label", "label_source", "image_url", "metadata", "in_distribution",
                          "dicom", "wado_url", "viewer_url"}
    assert first["image_url"] == f"/images/{first['id']}"
    assert first["metadata"]["width"] == 48  # the png_bytes image


def test_filters_and_their_totals(client: TestClient, gallery: list[dict[str, Any]]) -> None:
    body = _list(client, label="Hand")
    assert body["total"] >= 2 and {it["label"] for it in body["items"]} == {"Hand"}
    given = _list(client, label_source="given")
    assert given["total"] == 12 and {it["label_source"] for it in given["items"]} == {"given"}
    assert _list(client, label_source="predicted")["total"] == 2
    assert _list(client, modality="CT") == {"items": [], "total": 0, "next_cursor": None}
    # The filters hold across pages: the cursor only says where the previous page ended.
    page1 = _list(client, label_source="given", limit=10)
    page2 = _list(client, label_source="given", limit=10, cursor=page1["next_cursor"])
    assert len(page1["items"]) == 10 and len(page2["items"]) == 2
    assert page2["next_cursor"] is None and page2["total"] == 12


def test_modality_filter_reads_metadata(client: TestClient) -> None:
    (ct,) = index_bytes(client, [png_bytes(1)], metadata='{"modality": "CT"}')
    index_bytes(client, [png_bytes(2)], metadata='{"modality": "MR"}')
    assert [it["id"] for it in _list(client, modality="ct")["items"]] == [ct["id"]]


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 501}, {"limit": "x"}, {"label": "Liver"},
    {"label_source": "guessed"}, {"cursor": "not-a-cursor"}, {"cursor": "aTow"},  # "i:0"
    {"cursor": "x" * 65}, {"cursor": ""}, {"modality": ""}, {"labl": "Hand"}, {"": "0"},
])
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    r = client.get("/images", params=params)
    assert r.status_code == 422, (params, r.text)
    assert isinstance(r.json()["detail"], str)


def test_info(client: TestClient, gallery: list[dict[str, Any]]) -> None:
    item = gallery[0]
    r = client.get(f"/images/{item['id']}/info")
    assert r.status_code == 200
    assert r.json()["label"] == item["label"] and r.json()["label_source"] == "given"
    assert client.get("/images/999/info").status_code == 404


def _search_ids(client: TestClient, data: bytes, label: str) -> list[int]:
    r = client.post("/search", files={"file": ("q", data)}, params={"label": label, "k": 100})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_relabel_moves_the_item_to_its_new_class(
    client: TestClient, gallery: list[dict[str, Any]]
) -> None:
    predicted = gallery[-1]
    assert predicted["label_source"] == "predicted"
    new = next(c for c in CLASSES if c != predicted["label"])
    r = client.patch(f"/images/{predicted['id']}", json={"label": new})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == new and r.json()["label_source"] == "given"
    assert client.get(f"/images/{predicted['id']}/info").json()["label"] == new
    assert predicted["id"] in _search_ids(client, png_bytes(2), new)
    assert predicted["id"] not in _search_ids(client, png_bytes(2), predicted["label"])
    hit = next(h for h in client.post("/search", files={"file": ("q", png_bytes(2))},
                                      params={"scope": "all", "k": 1}).json()["results"])
    assert hit["id"] == predicted["id"] and hit["label_source"] == "given"
    assert client.get("/health").json()["index"]["size"] == len(gallery)
    # The same label again: still given, still one item.
    assert client.patch(f"/images/{predicted['id']}", json={"label": new}).status_code == 200
    assert client.get("/health").json()["index"]["size"] == len(gallery)


@pytest.mark.parametrize("body", [
    {"label": "Liver"}, {"label": ""}, {}, {"label": 3}, {"label": "Hand", "extra": 1}, [],
])
def test_relabel_refuses_bad_bodies(
    client: TestClient, gallery: list[dict[str, Any]], body: Any
) -> None:
    r = client.patch(f"/images/{gallery[0]['id']}", json=body)
    assert r.status_code == 422, (body, r.text)
    assert isinstance(r.json()["detail"], str)
    assert client.get(f"/images/{gallery[0]['id']}/info").json()["label"] == gallery[0]["label"]


def test_relabel_unknown_id_is_404(client: TestClient) -> None:
    r = client.patch("/images/999", json={"label": "Hand"})
    assert r.status_code == 404 and r.json() == {"detail": "no image with id 999"}


def test_relabel_needs_the_key(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    c = open_client(make_settings(api_key=KEY))
    (item,) = index_bytes(c.__class__(c.app, headers={"X-API-Key": KEY}), [png_bytes(1)])
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = c.patch(f"/images/{item['id']}", json={"label": "Hand"}, headers=headers)
        assert r.status_code == 401
    r = c.patch(f"/images/{item['id']}", json={"label": "Hand"}, headers={"X-API-Key": KEY})
    assert r.status_code == 200
    assert c.get("/images").status_code == 200  # reads stay open


def _run(settings: Settings, action: Callable[[TestClient], Any]) -> Any:
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        return action(c)


def test_a_relabel_after_the_last_snapshot_survives_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    (item,) = _run(settings, lambda c: index_bytes(c, [png_bytes(1)], label="CXR"))
    snapshot = settings.data_dir / "index.saved"
    shutil.copytree(settings.data_dir / "index", snapshot)
    _run(settings, lambda c: c.patch(f"/images/{item['id']}", json={"label": "Hand"}))
    # As if the process died after the relabel's commit, before any snapshot: the old
    # snapshot (item under CXR, same ids, same count) is on disk.
    shutil.rmtree(settings.data_dir / "index")
    snapshot.rename(settings.data_dir / "index")

    def check(c: TestClient) -> None:
        assert _search_ids(c, png_bytes(1), "Hand") == [item["id"]]
        assert _search_ids(c, png_bytes(1), "CXR") == []
        assert c.get("/health").json()["index"]["size"] == 1

    _run(settings, check)
    _run(settings, check)  # and the snapshot written at that shutdown is in step
