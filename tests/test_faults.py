"""The test-only fault hook (CBMIR_TEST_FAULTS, app/service/faults.py): off by default,
refuses what it does not know, and its snapshot point sits where a crash must be survived."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from conftest import index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.config import Settings, load_settings
from app.main import create_app
from app.service.faults import NO_FAULTS, Faults, InjectedFault
from index import storage


def test_nothing_is_armed_by_default(tiny_model: os.PathLike[str]) -> None:
    assert load_settings(model_dir=tiny_model).test_faults == []
    assert Faults.parse([]) == NO_FAULTS
    NO_FAULTS.hit("snapshot_write")  # a no-op


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("snapshot_writ:crash", "unknown fault point 'snapshot_writ'"),
        ("snapshot_write", "needs an action"),
        ("snapshot_write:explode", "needs an action"),
    ],
)
def test_a_typo_is_refused_at_start(
    tiny_model: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("CBMIR_TEST_FAULTS", value)
    with pytest.raises(ValueError, match=f"^invalid CBMIR_TEST_FAULTS: .*{message}"):
        load_settings(model_dir=tiny_model)


def test_fail_raises_where_armed_only() -> None:
    faults = Faults.parse(["snapshot_write:fail"])
    with pytest.raises(InjectedFault, match="injected fault at snapshot_write"):
        faults.hit("snapshot_write")


def test_a_failed_snapshot_leaves_the_published_one_and_loses_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    index_dir = settings.index_dir
    blobs = [png_bytes(i) for i in range(3)]
    armed = make_settings(test_faults=["snapshot_write:fail"])
    with TestClient(create_app(armed)) as c:
        wait_ready(c)
        index_bytes(c, blobs[:2])
        snapshotter = c.app.state.loader.retriever.snapshotter  # type: ignore[attr-defined]
        snapshotter.faults = NO_FAULTS
        assert snapshotter.snapshot(force=True)  # published: two items
        published = storage.current_snapshot(index_dir)
        snapshotter.faults = Faults.parse(armed.test_faults)
        index_bytes(c, blobs[2:])
        with pytest.raises(InjectedFault):
            snapshotter.snapshot(force=True)
        # Complete under its temporary name, never published: the previous one still is.
        assert storage.current_snapshot(index_dir) == published
        assert any(n.endswith(".tmp") for n in os.listdir(index_dir))
    # The final snapshot failed the same way at shutdown; SQLite has all three.
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.get("/health").json()["index"]["size"] == 3
        r = c.post("/search", files={"file": ("q", blobs[2])}, params={"scope": "all", "k": 1})
        assert r.json()["results"][0]["score"] > 0.9999
