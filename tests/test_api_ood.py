"""The service's OOD verdict: /search, /index and /health under each CBMIR_OOD_POLICY.

The tiny test model, calibrated on the demo gallery (conftest ``calibrated_model``); the
OOD image is uniform noise, the in-distribution ones demo images it was fitted on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import OLD_ITEMS_TABLE, demo_files, index_bytes, noise_png, upload
from fastapi.testclient import TestClient

from app.config import Settings, load_settings
from app.service.store import NewItem, Store

NOISE = noise_png(0)


@pytest.fixture
def open_ood(make_settings: Callable[..., Settings], calibrated_model: Path,
             open_client: Callable[[Settings], TestClient]) -> Callable[..., TestClient]:
    def open_(policy: str = "flag", **overrides: Any) -> TestClient:
        return open_client(make_settings(model_dir=calibrated_model, ood_policy=policy,
                                         **overrides))

    return open_


def _gallery(c: TestClient) -> list[dict[str, Any]]:
    paths = demo_files(per_class=2)
    files = [upload(p.name, p.read_bytes()) for p in paths]
    r = c.post("/index", files=files, data={"label": [p.parent.name for p in paths]})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _search(c: TestClient, data: bytes, **params: Any) -> Any:
    return c.post("/search", files={"file": ("q.png", data)}, params=params)


def test_in_distribution_query_is_answered_as_before(open_ood: Callable[..., TestClient]) -> None:
    c = open_ood()
    _gallery(c)
    body = _search(c, demo_files(per_class=1)[2].read_bytes()).json()
    pred = body["prediction"]
    assert pred["in_distribution"] is True and body["warnings"] == []
    assert 0 <= pred["ood_score"] <= pred["ood_threshold"]
    assert body["scope"] == "predicted"
    assert {r["label"] for r in body["results"]} == {pred["label"]}


def test_ood_query_searches_all_classes_and_says_so(open_ood: Callable[..., TestClient]) -> None:
    c = open_ood()
    _gallery(c)
    r = _search(c, NOISE, k=50)
    assert r.status_code == 200, r.text
    body = r.json()
    pred = body["prediction"]
    assert pred["in_distribution"] is False and pred["ood_score"] > pred["ood_threshold"]
    assert body["scope"] == "all" and len(body["results"]) == 12
    (warning,) = body["warnings"]
    assert "out of distribution" in warning and "all classes" in warning
    assert "\n" not in warning
    # Scope all and a named label are answered as asked, with the warning.
    body = _search(c, NOISE, scope="all").json()
    assert body["scope"] == "all" and len(body["warnings"]) == 1
    body = _search(c, NOISE, label="Hand").json()
    assert body["scope"] == "label" and {r["label"] for r in body["results"]} == {"Hand"}
    assert "may mean little" in body["warnings"][0]


def test_index_records_the_verdict(open_ood: Callable[..., TestClient]) -> None:
    c = open_ood()
    demo = demo_files(per_class=1)[0].read_bytes()
    ood, given, known = index_bytes(c, [NOISE, noise_png(1), demo], label=["", "Hand", ""])
    # Unlabelled and OOD: stored under its predicted class, flagged, to be relabelled later.
    assert ood["label_source"] == "predicted" and ood["in_distribution"] is False
    assert given == {**given, "label": "Hand", "label_source": "given", "in_distribution": False}
    assert known["in_distribution"] is True
    store = c.app.state.loader.retriever.store  # type: ignore[attr-defined]
    assert store.get(ood["id"]).in_distribution is False
    assert store.get(known["id"]).in_distribution is True
    (again,) = index_bytes(c, [NOISE])  # a duplicate answers with the stored verdict
    assert again == {**ood, "duplicate": True}
    # The gallery lists and filters by it; never-checked rows match neither value.
    listed = c.get("/images", params={"in_distribution": "false"}).json()
    assert [it["id"] for it in listed["items"]] == [given["id"], ood["id"]]
    assert c.get("/images", params={"in_distribution": "true"}).json()["total"] == 1
    assert c.get(f"/images/{known['id']}/info").json()["in_distribution"] is True


def test_reject_refuses_ood_and_writes_nothing(open_ood: Callable[..., TestClient]) -> None:
    c = open_ood("reject")
    r = _search(c, NOISE)
    assert r.status_code == 422 and "query is out of distribution" in r.json()["detail"]
    assert "CBMIR_OOD_POLICY=reject" in r.json()["detail"] and "\n" not in r.json()["detail"]
    demo = demo_files(per_class=1)[0].read_bytes()
    r = c.post("/index", files=[upload("a.jpeg", demo), upload("noise.png", NOISE)])
    assert r.status_code == 422 and "file 2 ('noise.png')" in r.json()["detail"]
    retriever = c.app.state.loader.retriever  # type: ignore[attr-defined]
    assert retriever.store.count() == 0 and len(retriever.index) == 0
    assert not any(p.is_file() for p in retriever.store.originals.rglob("*"))
    # A label the user gave is kept, flag and all; in-distribution queries still answer.
    (item,) = index_bytes(c, [NOISE], label=["CXR"])
    assert item["label"] == "CXR" and item["in_distribution"] is False
    assert _search(c, demo).status_code == 200


def test_policy_off_computes_nothing(open_ood: Callable[..., TestClient]) -> None:
    c = open_ood("off")
    (item,) = index_bytes(c, [NOISE])
    assert item["in_distribution"] is None
    body = _search(c, NOISE).json()
    assert body["scope"] == "predicted" and body["warnings"] == []
    pred = body["prediction"]
    assert pred["in_distribution"] is None and pred["ood_score"] is None
    assert c.get("/health").json()["model"]["ood"]["policy"] == "off"


def test_uncalibrated_model_serves_and_says_so(client: TestClient) -> None:
    (item,) = index_bytes(client, [NOISE])
    assert item["in_distribution"] is None
    body = _search(client, NOISE).json()
    assert body["prediction"]["in_distribution"] is None and body["scope"] == "predicted"
    assert body["prediction"]["ood_score"] is None and body["prediction"]["ood_threshold"] is None
    (warning,) = body["warnings"]
    assert "no out-of-distribution calibration" in warning and "cbmir calibrate" in warning
    assert client.get("/health").json()["model"]["ood"] == {
        "method": None, "threshold": None, "policy": "flag"}


def test_health_shows_method_threshold_and_policy(open_ood: Callable[..., TestClient]) -> None:
    ood = open_ood("reject").get("/health").json()["model"]["ood"]
    assert ood["method"] == "maha-embedding+input" and ood["policy"] == "reject"
    assert ood["threshold"] > 0


def test_policy_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBMIR_OOD_POLICY", "REJECT")
    assert load_settings().ood_policy == "reject"
    monkeypatch.setenv("CBMIR_OOD_POLICY", "warn")
    with pytest.raises(ValueError, match="^invalid CBMIR_OOD_POLICY: "):
        load_settings()


def test_a_store_made_before_the_column_gains_it(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "cbmir.sqlite3")
    db.executescript(OLD_ITEMS_TABLE + """
        INSERT INTO items VALUES (1, 'a', 'CXR', 'given', 'image/png', 'png', '{}', x'00000000',
            '2024-01-01T00:00:00Z');
    """)
    db.close()
    store = Store(tmp_path)
    old = store.get(1)
    assert old is not None and old.in_distribution is None and old.label == "CXR"
    (new,) = store.insert([NewItem("b" * 64, b"x", "Hand", "predicted", "image/png", "png", {},
                                   np.zeros(1, np.float32), False)])
    assert store.get(new).in_distribution is False  # type: ignore[union-attr]
    store.close()
    assert Store(tmp_path).get(1) is not None  # opening it again changes nothing


def test_openapi_documents_the_new_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"in_distribution", "ood_score", "ood_threshold"} <= set(
        schemas["Prediction"]["properties"])
    assert "warnings" in schemas["SearchResponse"]["properties"]
    assert "in_distribution" in schemas["IndexedItem"]["properties"]
    assert set(schemas["OodInfo"]["properties"]) == {"method", "threshold", "policy"}
