"""Snapshots of the FAISS index: round trip, sidecar, validation, crash safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

import index.storage
from index import FaissIndex, IndexCorruptError, IndexMismatchError, VectorIndexError

# Tiny FAISS calls are dominated by OpenMP spinning on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("single_omp_thread")


DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(n: int = 60, seed: int = 0) -> FaissIndex:
    rng = np.random.default_rng(seed)
    idx = FaissIndex(DIM, model_fingerprint="resnet-abc")
    idx.add(np.arange(n) * 3 + 1, unit(rng, n), ["x" if i % 3 else "y" for i in range(n)])
    return idx


def snapshots(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "snap-" in p.name)


def assert_same_search(a: FaissIndex, b: FaissIndex) -> None:
    q = unit(np.random.default_rng(99), 4)
    for labels in (None, ["y"]):
        ra, rb = a.search(q, 7, labels), b.search(q, 7, labels)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.scores, rb.scores)


def test_round_trip_and_extra(tmp_path: Path) -> None:
    idx = make_index()
    assert not FaissIndex.exists(tmp_path)
    idx.save(tmp_path, extra={"last_seq": 123})
    assert FaissIndex.exists(tmp_path)
    loaded = FaissIndex.load(tmp_path, model_fingerprint="resnet-abc", dim=DIM)
    assert loaded.extra == {"last_seq": 123} and idx.extra == {"last_seq": 123}
    assert loaded.dim == DIM and loaded.model_fingerprint == "resnet-abc"
    assert sorted(loaded.ids().tolist()) == sorted(idx.ids().tolist())
    assert loaded.label_counts() == idx.label_counts() == {"x": 40, "y": 20}
    assert_same_search(idx, loaded)
    # the loaded index is fully functional
    loaded.add(np.array([1000]), unit(np.random.default_rng(1), 1), "z")
    assert loaded.remove([1, 1000]) == 2


def test_sidecar_content(tmp_path: Path) -> None:
    make_index().save(tmp_path, extra={"k": [1, 2]})
    snap = tmp_path / (tmp_path / "CURRENT").read_text().strip()
    meta = json.loads((snap / "index.json").read_text())
    assert meta["format_version"] == 1 and meta["metric"] == "ip"
    assert meta["dim"] == DIM and meta["index_type"] == "flat" and meta["count"] == 60
    assert meta["model_fingerprint"] == "resnet-abc"
    assert meta["faiss_version"] == faiss.__version__ and meta["created_at"].endswith("Z")
    assert meta["extra"] == {"k": [1, 2]}
    assert {k: v["count"] for k, v in meta["labels"].items()} == {"x": 40, "y": 20}
    for entry in meta["labels"].values():
        assert (snap / entry["file"]).is_file() and entry["kind"] == "flat"
        assert len(meta["files"][entry["file"]]["sha256"]) == 64


def test_empty_index_round_trip(tmp_path: Path) -> None:
    FaissIndex(DIM).save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert len(loaded) == 0 and loaded.label_counts() == {}


def test_mismatch_errors(tmp_path: Path) -> None:
    make_index().save(tmp_path)
    with pytest.raises(IndexMismatchError, match="resnet-abc"):
        FaissIndex.load(tmp_path, model_fingerprint="other-model")
    with pytest.raises(IndexMismatchError, match="dim"):
        FaissIndex.load(tmp_path, dim=DIM * 2)
    assert issubclass(IndexMismatchError, VectorIndexError)


def test_missing_index_is_corrupt_error(tmp_path: Path) -> None:
    with pytest.raises(IndexCorruptError, match="CURRENT"):
        FaissIndex.load(tmp_path / "nowhere")


def _snap(directory: Path) -> Path:
    return directory / (directory / "CURRENT").read_text().strip()


@pytest.mark.parametrize("damage", ["flip", "delete", "sidecar", "pointer", "refit"])
def test_corrupt_files_raise_one_line_error(tmp_path: Path, damage: str) -> None:
    make_index().save(tmp_path)
    snap = _snap(tmp_path)
    data = snap / json.loads((snap / "index.json").read_text())["labels"]["x"]["file"]
    if damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "delete":
        data.unlink()
    elif damage == "sidecar":
        (snap / "index.json").write_text("{not json")
    elif damage == "pointer":
        (tmp_path / "CURRENT").write_text("snap-000099\n")
    else:  # garbage whose checksum is "fixed up", so FAISS itself must reject it
        data.write_bytes(b"garbage" * 10)
        meta = json.loads((snap / "index.json").read_text())
        meta["files"][data.name] = {"bytes": 70, "sha256": index.storage._sha256(data)}
        (snap / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError) as err:
        FaissIndex.load(tmp_path)
    assert "\n" not in str(err.value)


def test_crash_before_publish_keeps_previous_snapshot(tmp_path, monkeypatch) -> None:
    idx = make_index()
    idx.save(tmp_path, extra={"seq": 1})
    first = snapshots(tmp_path)
    idx.add(np.array([5000]), unit(np.random.default_rng(2), 1), "x")

    def crash(*_args: object) -> None:
        raise OSError("simulated power loss")

    monkeypatch.setattr(index.storage.os, "replace", crash)
    with pytest.raises(OSError, match="power loss"):
        idx.save(tmp_path, extra={"seq": 2})
    monkeypatch.undo()
    loaded = FaissIndex.load(tmp_path)
    assert loaded.extra == {"seq": 1} and 5000 not in loaded.ids()
    assert first[0] in snapshots(tmp_path)
    # the next save publishes and removes the stale snapshot directories
    idx.save(tmp_path, extra={"seq": 3})
    assert len(snapshots(tmp_path)) == 1
    assert FaissIndex.load(tmp_path).extra == {"seq": 3}


def test_crash_while_writing_files_keeps_previous_snapshot(tmp_path, monkeypatch) -> None:
    idx = make_index()
    idx.save(tmp_path)
    calls = []
    real_write = faiss.write_index

    def flaky_write(ix: object, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:  # second label: half a snapshot is on disk
            Path(path).write_bytes(b"partial")
            raise RuntimeError("disk full")
        real_write(ix, path)

    monkeypatch.setattr(faiss, "write_index", flaky_write)
    idx.remove([1])
    with pytest.raises(RuntimeError, match="disk full"):
        idx.save(tmp_path)
    monkeypatch.undo()
    assert len(snapshots(tmp_path)) == 2  # published + abandoned temporary one
    assert 1 in FaissIndex.load(tmp_path).ids()


def test_leftover_half_written_snapshot_is_ignored_then_cleaned(tmp_path: Path) -> None:
    idx = make_index()
    idx.save(tmp_path)
    (tmp_path / "snap-000007").mkdir()  # e.g. renamed but never published
    (tmp_path / ".snap-000008.tmp").mkdir()
    (tmp_path / ".snap-000008.tmp" / "label-0000.faiss").write_bytes(b"junk")
    assert_same_search(idx, FaissIndex.load(tmp_path))
    idx.save(tmp_path)
    assert snapshots(tmp_path) == ["snap-000009"]
    assert_same_search(idx, FaissIndex.load(tmp_path))


def test_older_snapshots_are_deleted(tmp_path: Path) -> None:
    idx = make_index()
    for _ in range(3):
        idx.save(tmp_path)
    assert snapshots(tmp_path) == ["snap-000003"]
    assert sorted(os.listdir(tmp_path)) == ["CURRENT", "snap-000003"]


def test_extra_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON"):
        make_index().save(tmp_path, extra={"bad": object()})
    assert not FaissIndex.exists(tmp_path)
