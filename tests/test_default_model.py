"""The committed default model (models/mednist): present, small, and accurate."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models import DEFAULT_MODEL_DIR
from models.config import WEIGHTS_FILE
from models.embed import Embedder
from models.training.dataset import Record, load_prepared

ROOT = Path(__file__).resolve().parents[1]
MEDNIST = ROOT.parent / "shared" / "data" / "mednist"
DEMO = ROOT / "app" / "demo"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(DEFAULT_MODEL_DIR, device="cpu")


def _accuracy(emb: Embedder, records: list[Record]) -> float:
    prep = load_prepared(records, emb.config, progress=False)
    pred = emb.embed_prepared(prep.images).probabilities.argmax(1)
    return float(np.mean(pred == prep.labels))


def test_default_model_is_small_and_self_describing(embedder: Embedder) -> None:
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 10 * 1024 * 1024
    cfg = embedder.config
    assert cfg.class_names == ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]
    assert (cfg.in_channels, cfg.image_size) == (1, 64)
    assert embedder.model.embedding_dim == cfg.embedding_dim
    assert cfg.data_fingerprint and cfg.train_args and cfg.metrics["val_accuracy"] >= 0.995


def test_default_model_classifies_the_bundled_demo_gallery(embedder: Embedder) -> None:
    # Runs without ../shared: the demo gallery ships in the repo (train-split images).
    records = [Record(p, p.parent.name, "train") for p in sorted(DEMO.glob("*/*.jpeg"))]
    assert len(records) == 600
    assert _accuracy(embedder, records) >= 0.99


@pytest.mark.skipif(not (MEDNIST / "split.csv").is_file(),
                    reason="../shared/data/mednist is absent on this machine")
def test_default_model_on_a_fixed_subset_of_the_mednist_test_split(embedder: Embedder) -> None:
    with (MEDNIST / "split.csv").open(newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rng = np.random.default_rng(0)
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in test:
        by_class.setdefault(r["label"], []).append(r)
    picked = [by_class[c][i] for c in sorted(by_class)
              for i in sorted(rng.choice(len(by_class[c]), 150, replace=False))]
    records = [Record(MEDNIST / r["path"], r["label"], "test") for r in picked]
    assert _accuracy(embedder, records) >= 0.995
