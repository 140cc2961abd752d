"""One contract, both backends: embedded (SQLite + FAISS) and shared (PostgreSQL + pgvector,
a real server from tests/pgserver.py). Exact top-k against numpy per scope, delete, dedup,
restart, refusal of another model's database, a schema from a newer cbmir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CLASSES, demo_files, index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.service.retriever import Retriever
from models.checkpoint import save_checkpoint
from models.cnn import CbmirCNN
from models.config import ModelConfig
from tests.dicomfiles import ct_series, edited_header, jpeg_lossless

BACKENDS = ["embedded", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend_settings(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Callable[..., Settings]:
    """``make_settings`` for the backend under test (a fresh database for postgres)."""
    if request.param == "embedded":
        return make_settings
    url = request.getfixturevalue("pg_url")
    return lambda **kw: make_settings(database_url=url, **kw)


@pytest.fixture
def opened(backend_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def open_(**kw: Any) -> TestClient:
        c = TestClient(create_app(backend_settings(**kw)))
        c.__enter__()
        clients.append(c)
        wait_ready(c)
        return c

    yield open_
    for c in reversed(clients):
        c.__exit__(None, None, None)


def _retriever(c: TestClient) -> Retriever:
    r = c.app.state.loader.retriever  # type: ignore[attr-defined]
    assert r is not None
    return r  # type: ignore[no-any-return]


def _all_vectors(r: Retriever) -> tuple[np.ndarray, np.ndarray, list[str]]:
    parts = list(r.store.vectors(r.index.dim))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [lb for p in parts for lb in p[2]])


def _store_demo(c: TestClient, per_class: int = 3) -> list[dict[str, Any]]:
    paths = demo_files(per_class=per_class)
    return index_bytes(c, [p.read_bytes() for p in paths], label=[p.parent.name for p in paths])


def test_exact_top_k_matches_numpy_in_every_scope(opened: Callable[..., TestClient]) -> None:
    c = opened()
    _store_demo(c)
    r = _retriever(c)
    ids, vecs, labels = _all_vectors(r)
    assert len(ids) == 3 * len(CLASSES)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((4, r.index.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = 5
    for scope in [None, ["Hand"], ["CXR", "HeadCT"]]:
        keep = np.array([scope is None or lb in scope for lb in labels])
        got = r.index.search(queries, k, scope)
        for qi, q in enumerate(queries):
            scores = vecs[keep] @ q
            order = np.argsort(-scores)[:k]
            n = min(k, int(keep.sum()))
            assert list(got.ids[qi, :n]) == list(ids[keep][order][:n]), scope
            np.testing.assert_allclose(got.scores[qi, :n], scores[order][:n], atol=1e-5)
            assert (got.ids[qi, n:] == -1).all()


def test_search_finds_each_stored_image_top1(opened: Callable[..., TestClient]) -> None:
    c = opened()
    items = _store_demo(c, per_class=1)
    for item, path in zip(items, demo_files(per_class=1), strict=True):
        for params in ({"scope": "all"}, {"label": item["label"]}):
            res = c.post("/search", files={"file": ("q", path.read_bytes())},
                         params={**params, "k": 3}).json()["results"]
            assert res[0]["id"] == item["id"] and res[0]["score"] == pytest.approx(1, abs=1e-4)


def test_dedup_delete_and_relabel(opened: Callable[..., TestClient]) -> None:
    c = opened()
    a, b = index_bytes(c, [png_bytes(1), png_bytes(2)], label=["Hand", "CXR"])
    again = index_bytes(c, [png_bytes(1)])
    assert again[0]["id"] == a["id"] and again[0]["duplicate"] is True
    assert c.get("/health").json()["index"]["size"] == 2
    assert c.get(f"/images/{a['id']}", params={"original": True}).content == png_bytes(1)

    r = c.patch(f"/images/{b['id']}", json={"label": "Hand"})
    assert r.status_code == 200, r.text
    hits = c.post("/search", files={"file": ("q", png_bytes(2))},
                  params={"label": "Hand", "k": 5}).json()["results"]
    assert [h["id"] for h in hits][:1] == [b["id"]]
    assert not c.post("/search", files={"file": ("q", png_bytes(2))},
                      params={"label": "CXR", "k": 5}).json()["results"]

    assert c.delete(f"/images/{a['id']}").status_code == 204
    assert c.get(f"/images/{a['id']}").status_code == 404
    assert c.delete(f"/images/{a['id']}").status_code == 404
    hits = c.post("/search", files={"file": ("q", png_bytes(1))},
                  params={"scope": "all", "k": 5}).json()["results"]
    assert a["id"] not in [h["id"] for h in hits]
    # Stored again after the delete: a new id (ids are never reused).
    (back,) = index_bytes(c, [png_bytes(1)])
    assert back["duplicate"] is False and back["id"] > b["id"]


def test_restart_keeps_everything(opened: Callable[..., TestClient]) -> None:
    c = opened()
    items = _store_demo(c, per_class=1)
    c.__exit__(None, None, None)
    c2 = opened()
    assert c2.get("/health").json()["index"]["size"] == len(items)
    for item, path in zip(items, demo_files(per_class=1), strict=True):
        top = c2.post("/search", files={"file": ("q", path.read_bytes())},
                      params={"scope": "all", "k": 1}).json()["results"][0]
        assert top["id"] == item["id"]
    listed = c2.get("/images", params={"label": "Hand"}).json()
    assert listed["total"] == 1


def _other_model(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = CbmirCNN(in_channels=1, num_classes=6, widths=[8, 16], fc_dims=[32, 16]).eval()
    cfg = ModelConfig(name="tiny-other", in_channels=1, image_size=64, class_names=CLASSES,
                      mean=[0.5], std=[0.25], widths=[8, 16], fc_dims=[32, 16])
    out = tmp_path / "other-model"
    save_checkpoint(model, cfg, out)
    return out


def test_another_models_store_is_refused(
    opened: Callable[..., TestClient], backend_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    c = opened()
    index_bytes(c, [png_bytes(1)])
    c.__exit__(None, None, None)
    with TestClient(create_app(backend_settings(model_dir=_other_model(tmp_path)))) as c2:
        loader = c2.app.state.loader  # type: ignore[attr-defined]
        assert loader.done.wait(60)
        assert loader.retriever is None
        assert "embedded by model 'tiny-test'" in loader.error
        assert c2.get("/health").status_code == 503


def test_newer_schema_is_refused(pg_url: str, make_settings: Callable[..., Settings]) -> None:
    import psycopg

    settings = make_settings(database_url=pg_url)
    Retriever.open(settings).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO cbmir_schema (version) VALUES (99)")
    with pytest.raises(ValueError, match="schema is version 99, made by a newer cbmir"):
        Retriever.open(settings)


def test_unreachable_database_is_one_line_without_password(
    make_settings: Callable[..., Settings],
) -> None:
    from serverproc import free_port

    from app.server import preflight

    url = f"postgresql://cbmir:s3cret-pw@127.0.0.1:{free_port()}/cbmir"
    with pytest.raises(ValueError) as e:
        preflight(make_settings(database_url=url))
    msg = str(e.value)
    assert "\n" not in msg and "s3cret-pw" not in msg
    assert msg.startswith("cannot connect to the database postgresql://cbmir:***@127.0.0.1:")


def test_migrate_copies_an_embedded_store_without_re_embedding(
    make_settings: Callable[..., Settings], pg_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.service.pg.migrate import migrate

    embedded = make_settings()
    with TestClient(create_app(embedded)) as c:
        wait_ready(c)
        items = _store_demo(c, per_class=1)
        assert c.delete(f"/images/{items[0]['id']}").status_code == 204
        kept = items[1:]
        before = {i["id"]: c.post("/search", files={"file": ("q", p.read_bytes())},
                                  params={"scope": "all", "k": 3}).json()["results"]
                  for i, p in zip(items, demo_files(per_class=1), strict=True) if i in kept}
    summary = migrate(embedded.data_dir, pg_url, progress=False)
    assert summary["copied"] == len(kept)
    assert migrate(embedded.data_dir, pg_url, progress=False)["skipped"] == len(kept)

    # Nothing is embedded by the serving side either: the stored vectors are the index.
    with TestClient(create_app(make_settings(database_url=pg_url))) as c:
        wait_ready(c)
        for i, p in zip(items, demo_files(per_class=1), strict=True):
            if i not in kept:
                continue
            got = c.post("/search", files={"file": ("q", p.read_bytes())},
                         params={"scope": "all", "k": 3}).json()["results"]
            assert [h["id"] for h in got] == [h["id"] for h in before[i["id"]]]
            assert c.get(f"/images/{i['id']}", params={"original": True}).content == \
                p.read_bytes()
        (new,) = index_bytes(c, [png_bytes(7)])
        assert new["id"] > max(i["id"] for i in items)  # the id sequence moved past them


def test_hnsw_indexes_are_built_concurrently_and_used(
    make_settings: Callable[..., Settings], pg_url: str,
) -> None:
    import psycopg

    settings = make_settings(database_url=pg_url, pg_index="hnsw")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        items = _store_demo(c, per_class=3)
        r = _retriever(c)
        thread = getattr(r.store, "hnsw_thread", None)
        assert thread is not None
        thread.join(60)
        with psycopg.connect(pg_url) as conn:
            valid = conn.execute(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname LIKE 'item_vectors_%%_hnsw' AND i.indisvalid").fetchone()[0]
            assert valid == len(CLASSES)
            # A partition big enough for the planner to prefer its HNSW index to a scan.
            rng = np.random.default_rng(0)
            extra = rng.standard_normal((3000, r.index.dim)).astype(np.float32)
            extra /= np.linalg.norm(extra, axis=1, keepdims=True)
            with conn.cursor() as cur:
                cur.executemany(
                    "WITH i AS (INSERT INTO items (sha256, label, label_source, content_type, "
                    "format, metadata) VALUES (%s, 'Hand', 'given', 'image/png', 'png', '{}') "
                    "RETURNING id) INSERT INTO item_vectors (label, id, vector) "
                    "SELECT 'Hand', id, %s::vector FROM i",
                    [(f"{n:064x}", "[" + ",".join(f"{x:.6f}" for x in v) + "]")
                     for n, v in enumerate(extra)])
            conn.commit()
            conn.execute("ANALYZE item_vectors")
            q = "[" + ",".join(f"{x:.6f}" for x in extra[0]) + "]"
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN SELECT id FROM item_vectors WHERE label = 'Hand' ORDER BY vector <#> "
                f"'{q}' LIMIT 3").fetchall())
            assert "_hnsw" in plan
        # Filtered to a class, k larger than ef_search would cut short: iterative scan.
        got = r.index.search(_all_vectors(r)[1][:1], 3, ["Hand"])
        assert (got.ids[0] >= 0).all()
        assert c.get("/health").json()["index"]["type"] == "hnsw"
        assert len(items) == 3 * len(CLASSES)


def test_dicom_identity_fields_and_deletes_by_study(opened: Callable[..., TestClient]) -> None:
    """Issue 12's DICOM identity holds on both backends: one item per SOP instance (other
    syntax, edited header: a duplicate), UID fields on hits and lists, delete by series and
    by study."""
    c = opened(store_originals="original")
    study, series, slices = ct_series(3, seed=1)
    _, series2, slices2 = ct_series(2, seed=2, study=study)
    r = c.post("/index", files=[("files", (f"s{i}.dcm", b))
                                for i, b in enumerate(slices + slices2)])
    assert r.status_code == 200, r.text
    first = r.json()["items"]
    assert [i["duplicate"] for i in first] == [False] * 5
    again = [jpeg_lossless(slices[0]), edited_header(slices[1], SeriesDescription="edited")]
    r = c.post("/index", files=[("files", (f"a{i}.dcm", b)) for i, b in enumerate(again)])
    assert r.status_code == 200, r.text
    assert [(i["id"], i["duplicate"]) for i in r.json()["items"]] == [
        (first[0]["id"], True), (first[1]["id"], True)]
    listed = c.get("/images", params={"series_uid": series}).json()
    assert listed["total"] == 3
    assert {i["dicom"]["study_uid"] for i in listed["items"]} == {study}
    assert {i["dicom"]["series_description"] for i in listed["items"]} == {"synthetic"}
    hit = c.post("/search", files={"file": ("q.dcm", slices[2])},
                 params={"scope": "all", "k": 1}).json()["results"][0]
    assert hit["id"] == first[2]["id"] and hit["dicom"]["series_uid"] == series
    assert c.delete("/images", params={"series_uid": series2}).status_code in (200, 204)
    assert c.get("/images", params={"study_uid": study}).json()["total"] == 3
    assert c.delete("/images", params={"study_uid": study}).status_code in (200, 204)
    assert c.get("/images").json()["total"] == 0
