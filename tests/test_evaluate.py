"""End to end on a tiny random model and a tiny image-folder data set."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, load_config, save_checkpoint
from models.cnn import CbmirCNN
from models.config import ModelConfig
from models.training.evaluate import run_evaluation
from models.training.report import record_in_model_card

CLASSES = ["ClassA", "ClassB", "ClassC"]
PER_SPLIT = {"train": 4, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, image_size=32, class_names=CLASSES, mean=[0.5], std=[0.25],
                      widths=[8, 16], fc_dims=[32, 16])
    model = CbmirCNN.from_config(cfg).eval()
    save_checkpoint(model, cfg, root / "model")

    data = root / "data"
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        i = 0
        for split, n in PER_SPLIT.items():
            for _ in range(n):
                i += 1
                # Class-dependent brightness plus noise: distinct files, some structure.
                arr = np.clip(60 * c + rng.integers(0, 120, (40, 36)), 0, 255).astype(np.uint8)
                rel = f"{name}/{i:04d}.png"
                Image.fromarray(arr).save(data / rel)
                md5 = hashlib.md5((data / rel).read_bytes()).hexdigest()
                rows.append({"path": rel, "label": name, "split": split, "md5": md5})
    split_csv = data / "split.csv"
    with split_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "md5"])
        w.writeheader()
        w.writerows(rows)
    return root / "model", data, split_csv


def _in_unit(v: float) -> bool:
    return isinstance(v, float) and 0.0 <= v <= 1.0


def test_run_evaluation_writes_full_report(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model_dir, data, split_csv = setup
    out = tmp_path / "out"
    report = run_evaluation(model_dir, data, split_csv, out, device="cpu", progress=False)

    for name in ("report.json", "report.md", "confusion_matrix.png", "pr_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    c = report["classification"]
    assert _in_unit(c["accuracy"]) and _in_unit(c["macro_f1"])
    assert set(c["per_class"]) == set(CLASSES)
    for v in c["per_class"].values():
        assert all(_in_unit(v[k]) for k in ("precision", "recall", "f1"))
        assert v["support"] == PER_SPLIT["test"]
    cm = np.array(c["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 9

    for scope in ("all", "predicted"):
        r = report["retrieval"][scope]
        for key in ("map", "map_at_10", "map_at_100", "precision_at_1", "precision_at_10",
                    "precision_at_100"):
            assert _in_unit(r[key]), (scope, key)
    # With the gallery labelled by true class, a correctly classified query's restricted
    # ranking is all relevant (AP 1) and a misclassified one's holds none (AP 0).
    pred = report["retrieval"]["predicted"]
    assert pred["map"] == pytest.approx(c["accuracy"])
    assert pred["precision_at_1"] == pytest.approx(c["accuracy"])
    assert pred["misclassified_queries"] == round(9 * (1 - c["accuracy"]))
    # 4 gallery images per class, so P@10 is at most 4/10 in the restricted scope.
    assert pred["precision_at_10"] <= 0.4 + 1e-9

    t = report["timing"]
    assert t["embed_images_per_s"] > 0 and t["decode_s"] >= 0
    assert set(t["search_ms_per_query"]) == {"all", "predicted"}
    assert all(v > 0 for v in t["search_ms_per_query"].values())
    assert report["checks"]["faiss_top10_agreement"] == 1.0

    d = report["data"]
    assert (d["gallery"], d["queries"], d["classes"], d["skipped"]) == (12, 9, 3, 0)
    assert isinstance(d["fingerprint"], str) and d["fingerprint"]
    m = report["model"]
    assert m["embedding_dim"] == 16 and m["flops_per_image"] > 0 and m["fingerprint"]
    assert "train split" in report["protocol"] and "test split" in report["protocol"]
    assert report["paper"]["accuracy"] == 0.9977 and report["paper"]["map"] == 0.69

    md = (out / "report.md").read_text()
    assert "Qayyum et al. 2017" in md and "| mAP (full ranking) |" in md and "0.9977" in md


def test_max_queries_and_model_card(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model_dir, data, split_csv = setup
    out = tmp_path / "out"
    report = run_evaluation(model_dir, data, split_csv, out, device="cpu", max_queries=4,
                            progress=False)
    assert report["data"]["queries"] == 4
    assert sum(sum(r) for r in report["classification"]["confusion_matrix"]) == 4

    (model_dir / "README.md").write_text("# Model card\n\n## Evaluation\n\nold\n")
    record_in_model_card(model_dir, out)
    ev = load_config(model_dir).metrics["evaluation"]
    assert ev["queries"] == 4 and ev["accuracy"] == report["classification"]["accuracy"]
    card = (model_dir / "README.md").read_text()
    assert "old" not in card and card.count("## Evaluation") == 1
    # The checkpoint still loads: the config change kept the weights hash valid.
    load_checkpoint(model_dir)
