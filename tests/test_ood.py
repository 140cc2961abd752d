"""The OOD score (models/ood.py), its fitting (models/training/calibrate.py) and its figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, DEMO_DIR

from models.checkpoint import load_config
from models.config import WEIGHTS_FILE
from models.embed import Embedder
from models.ood import Gaussian, OodStatsError, input_statistics, load_scorer
from models.training.calibrate import fit_gaussian, fit_scorer
from models.training.dataset import Record, load_prepared
from models.training.ood_metrics import auroc, flagged, fpr_at_tpr


def test_auroc_and_fpr_on_hand_worked_scores() -> None:
    ind = np.array([0.1, 0.2, 0.3, 0.4])
    assert auroc(ind, np.array([0.5, 0.6])) == 1.0
    assert auroc(ind, np.array([0.0])) == 0.0
    # 0.25 beats 0.1 and 0.2, loses to 0.3 and 0.4; the tie with 0.4 counts one half.
    assert auroc(ind, np.array([0.25, 0.4])) == pytest.approx((2 + 3.5) / 8)
    in95 = np.arange(1, 101, dtype=float)  # 95th percentile: 95.05
    assert fpr_at_tpr(in95, np.array([50.0, 95.0, 96.0, 200.0])) == 0.5
    assert flagged(np.array([1.0, 2.0, 3.0]), 2.0) == pytest.approx(1 / 3)


def test_input_statistics_of_flat_and_striped_images() -> None:
    imgs = np.zeros((3, 1, 64, 64), np.uint8)
    imgs[1] = 255
    imgs[2, :, :, ::2] = 200  # vertical stripes, two pixels apart
    shares = np.exp(input_statistics(imgs)) - 1e-3
    assert shares.shape == (3, 32)
    assert np.allclose(shares[:, :16].sum(1), 1) and np.allclose(shares[:, 16:].sum(1), 1)
    assert shares[0, 0] == pytest.approx(1) and shares[1, 15] == pytest.approx(1)
    assert shares[0, 16] == pytest.approx(1)  # a flat image: every difference is 0
    # Sampled every 2nd pixel the stripes are flat too: the grid, not the pixels, counts.
    assert shares[2, 16] == pytest.approx(1) and shares[2, 12] == pytest.approx(1)
    # Per image: a batch gives the rows of its images one by one.
    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 48, 48), dtype=np.uint8)
    one_by_one = np.concatenate([input_statistics(rgb[i : i + 1]) for i in range(4)])
    assert np.array_equal(input_statistics(rgb), one_by_one) and one_by_one.shape == (4, 96)


def test_mahalanobis_distance_on_a_worked_example() -> None:
    # Two classes around (0, 0) and (10, 0), the same spread: 2 along x, 1 along y.
    x = np.array([[-2, -1], [2, 1], [-2, 1], [2, -1], [8, -1], [12, 1], [8, 1], [12, -1]],
                 dtype=float)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    g = fit_gaussian(x, labels)
    assert np.allclose(g.means, [[0, 0], [10, 0]])
    d = g.distance(np.array([[4.0, 0.0], [0.0, 3.0], [10.0, 0.0]]))
    # Pooled over n − classes = 6: Σ = diag(32/6, 8/6), plus 0.1 % of its mean variance.
    var = np.array([16 / 3, 4 / 3])
    var += 1e-3 * var.mean()
    assert d == pytest.approx([16 / var[0], 9 / var[1], 0.0], rel=1e-5)


def test_a_gaussian_needs_no_pickle_and_survives_float32() -> None:
    g = Gaussian(np.zeros((2, 3)), np.eye(3))
    assert g.distance(np.ones((1, 3))).dtype == np.float32
    assert g.distance(np.ones((1, 3)))[0] == pytest.approx(3)


def _demo(per_class: int, offset: int = 0) -> list[Record]:
    return [Record(p, c, "test") for c in CLASSES
            for p in sorted((DEMO_DIR / c).glob("*.jpeg"))[offset : offset + per_class]]


def test_fitted_threshold_flags_the_target_share_of_val() -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((2000, 8)).astype(np.float32)
    imgs = rng.integers(0, 256, (2000, 1, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 3, 2000)
    fitted = fit_scorer(vec[:1000], imgs[:1000], labels[:1000], vec[1000:], imgs[1000:])
    assert flagged(fitted.val_scores, fitted.scorer.threshold) == pytest.approx(0.01, abs=0.001)


def test_calibration_round_trips_and_keeps_the_fingerprint(
    calibrated_model: Path, tiny_model: Path
) -> None:
    cfg, before = load_config(calibrated_model), load_config(tiny_model)
    assert cfg.fingerprint == before.fingerprint and cfg.weights_sha256 == before.weights_sha256
    weights = (calibrated_model / WEIGHTS_FILE).read_bytes()
    assert weights == (tiny_model / WEIGHTS_FILE).read_bytes()
    assert cfg.ood is not None and cfg.ood.method == "maha-embedding+input"
    assert cfg.ood.fit_images == 6 * 28 and cfg.ood.val_images == 6 * 12
    assert 0 < cfg.ood.val_flagged <= 0.02
    # config.json → scorer → the same scores as recomputed from the statistics' inputs.
    scorer = load_scorer(calibrated_model, cfg)
    assert scorer is not None and scorer.threshold == cfg.ood.threshold
    emb = Embedder.load(calibrated_model, device="cpu")
    prep = load_prepared(_demo(12, offset=28), cfg, progress=False)
    e = emb.embed_prepared(prep.images)
    scores = scorer.score(e.vectors, prep.images)
    assert flagged(scores, scorer.threshold) == pytest.approx(cfg.ood.val_flagged)
    # Written as JSON a human can read; the statistics as safetensors, never a pickle.
    raw = json.loads((calibrated_model / "config.json").read_text())
    assert raw["ood"]["stats_file"] == "ood.safetensors"
    assert (calibrated_model / "ood.safetensors").read_bytes()[8:9] == b"{"


def test_a_tampered_or_missing_statistics_file_is_refused(
    calibrated_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "m"
    shutil.copytree(calibrated_model, model)
    cfg = load_config(model)
    stats = model / "ood.safetensors"
    stats.write_bytes(stats.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(OodStatsError, match="does not match the hash"):
        load_scorer(model, cfg)
    stats.unlink()
    with pytest.raises(OodStatsError, match="no ood.safetensors"):
        load_scorer(model, cfg)


def test_cli_calibrate_gives_one_line_errors(tiny_model: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "app.cli", "calibrate", "--model", str(tiny_model)]
    for extra in (["--data", str(tmp_path / "nowhere")],
                  ["--data", str(DEMO_DIR), "--split-csv", str(tmp_path / "none.csv")],
                  ["--data", str(DEMO_DIR), "--method", "energy"]):
        r = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 2, r.stderr
        # One line of reason (argparse puts its usage line above its own).
        assert "Traceback" not in r.stderr and "error: " in r.stderr.strip().splitlines()[-1]
