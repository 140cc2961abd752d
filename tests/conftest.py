"""Shared fixtures: a tiny seeded CNN (so tests never depend on the real model's accuracy),
settings pointing at ``tmp_path``, and a ready ``TestClient``."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from models.checkpoint import save_checkpoint
from models.cnn import CbmirCNN
from models.config import ModelConfig
from models.embed import Embedder

CLASSES = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]
DEMO_DIR = Path(__file__).resolve().parents[1] / "app" / "demo"
READY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CbmirCNN(in_channels=1, num_classes=6, widths=[8, 16], fc_dims=[32, 16]).eval()
    cfg = ModelConfig(
        name="tiny-test", in_channels=1, image_size=64, class_names=CLASSES,
        mean=[0.5], std=[0.25], widths=[8, 16], fc_dims=[32, 16],
    )
    out = tmp_path_factory.mktemp("tiny-model")
    save_checkpoint(model, cfg, out)
    return out


@pytest.fixture(scope="session")
def calibrated_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (same weights, same fingerprint) with an OOD calibration fitted on the
    bundled demo gallery: 28 train and 12 val images per class."""
    from models.training.calibrate import calibrate_model

    out = tmp_path_factory.mktemp("tiny-calibrated")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    split = tmp_path_factory.mktemp("demo-split") / "split.csv"
    with split.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for c in CLASSES:
            for i, p in enumerate(sorted((DEMO_DIR / c).glob("*.jpeg"))):
                w.writerow([f"{c}/{p.name}", c, "train" if i < 28 else "val"])
    calibrate_model(out, DEMO_DIR, split, device="cpu", progress=False)
    return out


def noise_png(seed: int = 0, size: int = 64) -> bytes:
    """Uniform noise at the model's input size: nothing like a medical image."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(
        buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's CBMIR_* variables must not change what the tests see.
    import os

    for name in list(os.environ):
        if name.startswith("CBMIR_"):
            monkeypatch.delenv(name)


_LOADED: dict[tuple[str, str], Embedder] = {}
_real_load = Embedder.load


@pytest.fixture
def _reuse_loaded_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load (trace and freeze) each service-test model once per session: apps are many,
    models few. Only for the service tests (through ``make_settings``): their model
    directories are never rewritten, so a cached model cannot be stale."""

    def load(model_dir: Path | str, device: str = "auto") -> Embedder:
        key = (str(model_dir), device)
        if key not in _LOADED:
            _LOADED[key] = _real_load(model_dir, device)
        return _LOADED[key]

    monkeypatch.setattr(Embedder, "load", staticmethod(load))


@pytest.fixture
def make_settings(
    tiny_model: Path, tmp_path: Path, _reuse_loaded_models: None
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_dir": tiny_model, "data_dir": tmp_path / "data", "seed_demo": False,
            "device": "cpu", "snapshot_seconds": 3600,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def wait_ready(client: TestClient) -> None:
    """Wait for the background loader (an event, not a sleep), then check /health."""
    loader = client.app.state.loader  # type: ignore[attr-defined]
    assert loader.done.wait(READY_TIMEOUT_S), "service did not load in time"
    r = client.get("/health")
    assert r.status_code == 200, r.text


@pytest.fixture
def open_client() -> Iterator[Callable[[Settings], TestClient]]:
    """Factory of ready clients; every one opened is closed (lifespan exit) at teardown."""
    opened: list[TestClient] = []

    def open_(settings: Settings) -> TestClient:
        c = TestClient(create_app(settings))
        c.__enter__()
        opened.append(c)
        wait_ready(c)
        return c

    yield open_
    for c in reversed(opened):
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as c:
        wait_ready(c)
        yield c


# The items table of cbmir 0.1's store, before the in_distribution and DICOM columns: the
# migration tests open a data dir made with it.
OLD_ITEMS_TABLE = """CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE, label TEXT NOT NULL, label_source TEXT NOT NULL,
    content_type TEXT NOT NULL, format TEXT NOT NULL, metadata TEXT NOT NULL,
    vector BLOB NOT NULL, created_at TEXT NOT NULL);"""


def demo_files(per_class: int = 2) -> list[Path]:
    """The first ``per_class`` bundled demo images of every class (deterministic)."""
    return [p for c in CLASSES for p in sorted((DEMO_DIR / c).glob("*.jpeg"))[:per_class]]


def png_bytes(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def upload(name: str, data: bytes, field: str = "files") -> tuple[str, tuple[str, bytes, str]]:
    return (field, (name, data, "application/octet-stream"))


def index_bytes(client: TestClient, blobs: list[bytes], **data: Any) -> list[dict[str, Any]]:
    files = [upload(f"img{i}.png", b) for i, b in enumerate(blobs)]
    r = client.post("/index", files=files, data=data)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def index_demo(client: TestClient, per_class: int) -> list[dict[str, Any]]:
    """Store the first ``per_class`` demo images of every class with their folder labels."""
    paths = demo_files(per_class=per_class)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = client.post("/index", files=files, data={"label": [p.parent.name for p in paths]})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.fixture
def single_omp_thread() -> Iterator[None]:
    """One OpenMP thread for FAISS during a test: tiny FAISS calls are dominated by
    OpenMP start-up and spinning on a shared 2-core machine (10x slower under load);
    results do not depend on the thread count."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# -- PostgreSQL (tests/pgserver.py) ---------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One PostgreSQL server for the session (embedded, or CBMIR_TEST_DATABASE_URL)."""
    from pgserver import EXTERNAL_URL, PgCluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    cluster = PgCluster(EXTERNAL_URL)
    yield cluster
    cluster.close()


_DB_SEQ = iter(range(10**6))


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A fresh, empty database with pgvector, for this test only."""
    return str(pg_cluster.create_database(f"cbmir_test_{next(_DB_SEQ)}"))
