"""``cbmir evaluate-ood`` end to end on the tiny model and a demo-gallery split (seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, DEMO_DIR, noise_png

from app.cli import main
from models.training.ood_candidates import CANDIDATES
from models.training.ood_synthetic import KINDS, synthetic_image


def test_synthetic_images_are_seeded_and_distinct() -> None:
    for kind in KINDS:
        a, b = synthetic_image(kind, 1), synthetic_image(kind, 1)
        assert a.tobytes() == b.tobytes() and min(a.size) >= 48
    assert synthetic_image("text", 1).tobytes() != synthetic_image("text", 2).tobytes()
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        synthetic_image("fractal", 0)


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ood-eval") / "split.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for c in CLASSES:
            for i, p in enumerate(sorted((DEMO_DIR / c).glob("*.jpeg"))[:40]):
                w.writerow([f"{c}/{p.name}", c, "train" if i < 20 else "val" if i < 30 else "test"])
    return path


def test_evaluate_ood_writes_every_figure(calibrated_model: Path, demo_split: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    far = tmp_path / "noise"
    far.mkdir()
    for i in range(5):
        (far / f"{i}.png").write_bytes(noise_png(i))
    out = tmp_path / "report"
    rc = main(["evaluate-ood", "--model", str(calibrated_model), "--data", str(DEMO_DIR),
               "--split-csv", str(demo_split), "--out", str(out), "--far", f"noise={far}",
               "--shifted", str(far), "--synthetic", "2", "--near", "Hand",
               "--near-epochs", "1", "--near-train-per-class", "20", "--near-val-per-class",
               "10", "--near-test-per-class", "10", "--no-progress"])
    assert rc == 0 and "ood_report.md" in capsys.readouterr().out
    r = json.loads((out / "ood_report.json").read_text())
    assert r["methods"] == list(CANDIDATES) and r["chosen"] == "maha-embedding+input"
    assert set(r["far"]) == {"noise", *(f"synthetic {k}" for k in KINDS)}
    noise = r["far"]["noise"]["methods"]["maha-embedding+input"]
    assert noise["auroc"] == 1.0 and noise["flagged"] == 1.0
    assert r["shifted"]["noise"]["images"] == 5
    (near,) = r["near"]
    assert near["class"] == "Hand" and near["images"] == 10 and near["train_images"] == 100
    assert (Path(near["model_dir"]) / "ood.safetensors").is_file()  # training calibrates
    for m in CANDIDATES:
        assert 0 <= near["methods"][m]["auroc"] <= 1
        assert 0 <= r["in_distribution"][m]["flagged"] <= 1
    assert r["latency"]["median_us"] > 0
    md = (out / "ood_report.md").read_text()
    assert "## Scores compared" in md and "| Hand | 10 |" in md and "**maha-embedding+input**" in md
    # The same threshold `cbmir calibrate` would store on this split.
    assert np.isfinite(r["thresholds"]["maha-embedding+input"])


def test_evaluate_ood_bad_input_is_one_line(calibrated_model: Path, demo_split: Path,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate-ood", "--model", str(calibrated_model), "--data", str(DEMO_DIR),
            "--split-csv", str(demo_split), "--out", str(tmp_path / "r"), "--no-progress"]
    for extra, says in ((["--near", "Liver"], "not a class"),
                        (["--far", f"x={tmp_path / 'missing'}"], "not a directory")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1


def test_leave_one_out_models_copy_the_recorded_sampling_rule() -> None:
    from models import DEFAULT_MODEL_DIR
    from models.checkpoint import load_config
    from models.training.ood_eval import _recipe

    cfg = load_config(DEFAULT_MODEL_DIR)
    paths = {"data": "d", "out": "o"}
    assert _recipe(cfg, **paths).balance_rule == cfg.train_args["balance_rule"] == "even"
    older = {k: v for k, v in cfg.train_args.items() if k != "balance_rule"}
    assert _recipe(cfg.model_copy(update={"train_args": older}), **paths).balance_rule == "sqrt"
