"""The committed default model (models/multimodal): present, small, accurate, and right on
real clinical files rendered the ways archives render them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench.realworld.check import WINDOWS, window_png
from models import DEFAULT_MODEL_DIR
from models.config import WEIGHTS_FILE
from models.embed import Embedder
from models.imaging.decode import decode_image
from models.imaging.formats import is_image_file
from models.ood import load_scorer
from models.training.dataset import Record, load_prepared

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEMO = ROOT / "app" / "demo"
REALWORLD = DATA / "realworld-dev" / "ChestCT_dicom"
ANATOMY = ROOT / "bench" / "realworld" / "anatomy.csv"
CLASSES = ["AbdomenCT", "BreastMRI", "BreastUS", "CXR", "ChestCT", "ColonHistology",
           "Colonoscopy", "Dermoscopy", "FetalHeadUS", "Hand", "HeadCT"]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(DEFAULT_MODEL_DIR, device="cpu")


def _accuracy(emb: Embedder, records: list[Record]) -> float:
    prep = load_prepared(records, emb.config, progress=False)
    assert prep.failed == 0
    pred = emb.embed_prepared(prep.images).probabilities.argmax(1)
    return float(np.mean(pred == prep.labels))


def _fixed_test_subset(csv_path: Path, per_class: int) -> list[Record]:
    with csv_path.open(newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rng = np.random.default_rng(0)
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in test:
        by_class.setdefault(r["label"], []).append(r)
    picked = [by_class[c][i] for c in sorted(by_class)
              for i in sorted(rng.choice(len(by_class[c]), per_class, replace=False))]
    return [Record(csv_path.parent / r["path"], r["label"], "test") for r in picked]


def test_default_model_is_small_and_self_describing(embedder: Embedder) -> None:
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 20 * 1024 * 1024
    cfg = embedder.config
    assert cfg.class_names == CLASSES
    assert (cfg.arch, cfg.in_channels, cfg.image_size) == ("cbmir-resnet", 3, 64)
    assert embedder.model.embedding_dim == cfg.embedding_dim
    assert cfg.data_fingerprint and cfg.train_args and cfg.metrics["val_accuracy"] >= 0.99


def test_default_model_classifies_the_bundled_demo_gallery(embedder: Embedder) -> None:
    # Runs without ../shared: the demo gallery ships in the repo (train-split images).
    records = [Record(p, p.parent.name, "train") for p in sorted(DEMO.glob("*/*"))
               if is_image_file(p)]
    assert len(records) == 440
    assert _accuracy(embedder, records) >= 0.99


@pytest.mark.skipif(not (DATA / "multimodal-split.csv").is_file(),
                    reason="../shared/data/multimodal-split.csv is absent on this machine")
def test_default_model_on_a_fixed_subset_of_the_multimodal_test_split(
        embedder: Embedder) -> None:
    # 440 test images; the whole test split gives 0.9935 (README), this subset 0.9886.
    assert _accuracy(embedder, _fixed_test_subset(DATA / "multimodal-split.csv", 40)) >= 0.98


# Right answers of today's default model on the 11 slices below (7 thorax, 4 abdomen),
# less one: a regression guard. The goal is all of them; the README's real-files section
# says where it falls short (the lung window above all) and why.
FLOOR = {"dicom": 10, "lung": 9, "mediastinal": 10, "bone": 11, "full": 9}


@pytest.mark.skipif(not REALWORLD.is_dir(),
                    reason="../shared/data/realworld-dev is absent on this machine")
@pytest.mark.parametrize("window", [*WINDOWS, "dicom"])
def test_real_chest_ct_is_recognised_whatever_the_window(embedder: Embedder, window: str
                                                         ) -> None:
    # A handful of slices, each as the DICOM file or as an 8-bit PNG export with a lung,
    # mediastinal, bone or full-range window: thorax slices are ChestCT, slices below the
    # lungs AbdomenCT (bench/realworld/anatomy.csv; see the README's real-files section).
    levels = {r["file"]: r["level"] for r in csv.DictReader(ANATOMY.open())}
    thorax = sorted(f for f, lv in levels.items() if lv == "thorax")[::4]
    abdomen = sorted(f for f, lv in levels.items() if lv == "abdomen-pelvis")[::4]
    files = [REALWORLD / f for f in thorax + abdomen]
    blobs = [p.read_bytes() if window == "dicom" else window_png(p, WINDOWS[window])
             for p in files]
    probs = embedder.embed_images([decode_image(b).image for b in blobs]).probabilities
    predicted = [embedder.class_names[int(i)] for i in probs.argmax(1)]
    expected = ["ChestCT"] * len(thorax) + ["AbdomenCT"] * len(abdomen)
    right = sum(p == e for p, e in zip(predicted, expected, strict=True))
    assert right >= FLOOR[window] - 1, list(zip([f.name for f in files], predicted,
                                                strict=True))


# -- its out-of-distribution calibration (models/ood.py) -------------------------------

PBC = DATA / "pbc-sample"


def _ood_margin(emb: Embedder, images: np.ndarray) -> np.ndarray:
    """Score minus threshold: > 0 is flagged out of distribution."""
    scorer = load_scorer(DEFAULT_MODEL_DIR, emb.config)
    assert scorer is not None, "the default model has no OOD calibration (cbmir calibrate)"
    return scorer.score(emb.embed_prepared(images).vectors, images) - scorer.threshold


def test_default_model_is_calibrated_and_flags_noise(embedder: Embedder) -> None:
    ood = embedder.config.ood
    assert ood is not None and ood.method == "maha-embedding+input" and ood.fit_augmented
    assert 0.005 <= ood.val_flagged <= 0.015 and ood.val_images == 2164
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    grey_noise = np.repeat(rng.integers(0, 256, (2, 1, 64, 64), dtype=np.uint8), 3, axis=1)
    white = np.full((1, 3, 64, 64), 255, np.uint8)
    assert (_ood_margin(embedder, np.concatenate([noise, grey_noise, white])) > 0).all()


def test_default_model_flags_few_of_its_own_images(embedder: Embedder) -> None:
    # The bundled demo gallery (train-split images, 40 per class): about 1 % is the
    # calibrated rate (3 of 440 when it was calibrated), never a whole class.
    records = [Record(p, p.parent.name, "train") for p in sorted(DEMO.glob("*/*"))
               if is_image_file(p)]
    prep = load_prepared(records, embedder.config, progress=False)
    out = _ood_margin(embedder, prep.images) > 0
    assert out.mean() <= 0.02
    assert all(out[prep.labels == c].mean() <= 0.1 for c in range(len(CLASSES)))


@pytest.mark.skipif(not (DATA / "multimodal-split.csv").is_file(),
                    reason="../shared/data/multimodal-split.csv is absent on this machine")
def test_default_model_does_not_flag_a_test_image_of_each_class(embedder: Embedder) -> None:
    first: dict[str, str] = {}
    with (DATA / "multimodal-split.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] == "test":
                first.setdefault(r["label"], r["path"])
    records = [Record(DATA / first[c], c, "test") for c in CLASSES]
    prep = load_prepared(records, embedder.config, progress=False)
    assert len(prep.images) == 11 and (_ood_margin(embedder, prep.images) <= 0).all()


@pytest.mark.skipif(not PBC.is_dir(), reason="../shared/data/pbc-sample is absent here")
def test_default_model_flags_blood_cell_images(embedder: Embedder) -> None:
    cells = [Record(sorted((PBC / c).glob("*.jpg"))[0], "", "test")
             for c in ("basophil", "eosinophil", "lymphocyte", "neutrophil", "platelet")]
    prep = load_prepared(cells, embedder.config, progress=False)
    assert len(prep.images) == 5 and (_ood_margin(embedder, prep.images) > 0).all()
