"""Durability: data survives restarts; the index is reconciled with or rebuilt from SQLite."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from typing import Any

from conftest import CLASSES, DEMO_DIR, demo_files, index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.service.lock import DataDirLocked


def _top1(c: TestClient, data: bytes) -> Any:
    r = c.post("/search", files={"file": ("q", data)}, params={"scope": "all", "k": 1})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def _run(settings: Settings, action: Callable[[TestClient], Any]) -> Any:
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        return action(c)


def test_restart_keeps_everything(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    blobs = [p.read_bytes() for p in demo_files(per_class=1)]
    items = _run(settings, lambda c: index_bytes(c, blobs, label=CLASSES))

    def check(c: TestClient) -> None:
        assert c.get("/health").json()["index"]["size"] == len(blobs)
        for item, data in zip(items, blobs, strict=True):
            top = _top1(c, data)
            assert top["id"] == item["id"] and top["label"] == item["label"]
            assert c.get(f"/images/{item['id']}", params={"original": True}).content == data

    _run(settings, check)
    # Snapshot gone: rebuilt from the vectors stored in SQLite.
    shutil.rmtree(settings.data_dir / "index")
    _run(settings, check)
    assert (settings.data_dir / "index").is_dir()  # and saved again at shutdown


def test_changes_after_the_last_snapshot_are_reconciled(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    a, b = _run(settings, lambda c: index_bytes(c, [png_bytes(1), png_bytes(2)]))
    snapshot = settings.data_dir / "index.saved"
    shutil.copytree(settings.data_dir / "index", snapshot)

    def change(c: TestClient) -> Any:
        assert c.delete(f"/images/{a['id']}").status_code == 204
        return index_bytes(c, [png_bytes(3)])[0]

    new = _run(settings, change)
    # As if the process died before its last snapshot: an old snapshot on disk.
    shutil.rmtree(settings.data_dir / "index")
    snapshot.rename(settings.data_dir / "index")

    def check(c: TestClient) -> None:
        assert c.get("/health").json()["index"]["size"] == 2
        assert _top1(c, png_bytes(3))["id"] == new["id"]
        assert _top1(c, png_bytes(1))["id"] != a["id"]

    _run(settings, check)
    assert b["id"] == 2 and new["id"] == 3


def test_corrupt_snapshot_is_rebuilt(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    (item,) = _run(settings, lambda c: index_bytes(c, [png_bytes(1)]))
    for f in (settings.data_dir / "index").rglob("*.faiss"):
        f.write_bytes(b"garbage")
    assert _run(settings, lambda c: _top1(c, png_bytes(1)))["id"] == item["id"]


def test_orphaned_originals_are_cleaned(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    _run(settings, lambda c: index_bytes(c, [png_bytes(1)]))
    orphan = settings.data_dir / "originals" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    (orphan.parent / ".tmp-x1y2").write_bytes(b"half-written")
    _run(settings, lambda c: None)
    assert not orphan.exists()
    assert len(list((settings.data_dir / "originals").glob("*/*"))) == 1


def test_second_process_on_the_same_data_dir_is_refused(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
) -> None:
    settings = make_settings()
    open_client(settings)
    from app.service.bulk import index_folder

    try:
        index_folder(demo_files()[0].parent, settings, progress=False)
    except DataDirLocked as e:
        assert "in use by another cbmir process" in str(e)
    else:
        raise AssertionError("expected DataDirLocked")


def test_demo_is_seeded_into_an_empty_store(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(seed_demo=True)

    def counts(c: TestClient) -> Any:
        r = c.post("/search", files={"file": ("q", demo_files()[0].read_bytes())},
                   params={"label": "Hand", "k": 1000})
        return c.get("/health").json()["index"]["size"], len(r.json()["results"])

    # The bundled gallery: 40 distinct files in each of 11 class folders. The test model
    # knows 6 of the classes; the other folders' files are stored with predicted labels.
    unique = len({hashlib.sha256(p.read_bytes()).digest() for p in DEMO_DIR.glob("*/*")
                  if p.suffix.lower() in {".jpeg", ".jpg", ".png"}})
    assert unique == 440
    first = _run(settings, counts)
    assert first[0] == unique and first[1] >= 40  # the Hand folder, and any predicted Hand
    assert _run(settings, counts) == first  # not seeded twice
