"""Training end to end on a tiny real data set, and the data set's bad-input paths."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_checkpoint
from models.embed import Embedder
from models.training.dataset import DatasetError, scan_dataset
from models.training.train import TrainArgs, train

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"


def _copy_demo(dst: Path, classes: list[str], per_class: int) -> Path:
    for c in classes:
        (dst / c).mkdir(parents=True)
        for p in sorted((DEMO / c).glob("*.jpeg"))[:per_class]:
            shutil.copy(p, dst / c / p.name)
    return dst


def test_tiny_training_gives_a_loadable_checkpoint(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand", "HeadCT"], 60)
    out = tmp_path / "model"
    args = TrainArgs(data=str(data), out=str(out), epochs=1, widths=[8, 16], fc_dims=[32, 16],
                     progress=False)
    res = train(args)
    model, cfg = load_checkpoint(out)
    assert cfg.class_names == ["CXR", "Hand", "HeadCT"]
    assert (cfg.in_channels, cfg.image_size) == (1, 64)  # read off the images
    assert cfg.embedding_dim == model.embedding_dim == 16
    assert cfg.stem_convs == 1  # 64 px: the stem does not pool (recipe.stem_convs)
    assert cfg.train_args["epochs"] == 1 and cfg.data_fingerprint
    assert cfg.metrics["best_epoch"] == 1 == res.best_epoch
    for name in ("model.safetensors", "config.json", "README.md", "training_curve.png"):
        assert (out / name).is_file()
    emb = Embedder.load(out, device="cpu")
    imgs = np.zeros((2, 1, 64, 64), np.uint8)
    e = emb.embed_prepared(imgs)
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e.probabilities.sum(1), 1.0, atol=1e-5)


def test_training_is_reproducible(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 40)
    weights = []
    for i in range(2):
        args = TrainArgs(data=str(data), out=str(tmp_path / f"m{i}"), epochs=1, widths=[8, 16],
                         fc_dims=[32, 16], progress=False)
        train(args)
        weights.append(load_file(str(tmp_path / f"m{i}" / "model.safetensors")))
    # Same seed, same model. Not asserted bit for bit: MKL may change its thread count
    # under load, which reorders float sums in the last bits.
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.allclose(weights[0][k].double(), weights[1][k].double(), atol=1e-4), k


def test_auto_split_keeps_identical_files_together(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 30)
    # Five copies of one image: they must land in one split.
    src = next((data / "CXR").glob("*.jpeg"))
    for i in range(5):
        shutil.copy(src, data / "CXR" / f"copy{i}.jpeg")
    ds = scan_dataset(data)
    splits = {r.split for r in ds.records if r.path.read_bytes() == src.read_bytes()}
    assert len(splits) == 1
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    assert scan_dataset(data).records == ds.records  # deterministic


def test_corrupt_file_and_empty_class_are_skipped(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 30)
    (data / "CXR" / "broken.png").write_bytes(b"not an image at all")
    (data / "Empty").mkdir()
    ds = scan_dataset(data)
    assert ds.class_names == ["CXR", "Hand"]
    assert "Empty" in caplog.text
    # The broken file is listed (its name says PNG) and put in train, where it is read.
    assert any(r.path.name == "broken.png" for r in ds.records)
    ds = replace(ds, records=[replace(r, split="train") if r.path.name == "broken.png" else r
                              for r in ds.records])
    args = TrainArgs(data=str(data), out=str(tmp_path / "m"), epochs=1, widths=[8, 16],
                     fc_dims=[32, 16], progress=False)
    res = train(args, ds)
    assert "could not be read" in caplog.text
    metrics = res.config.metrics
    assert metrics["skipped_files"] == 1
    assert metrics["train_images"] == len(ds.split("train")) - 1


def test_single_class_is_refused(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR"], 10)
    with pytest.raises(DatasetError, match="at least 2 classes"):
        scan_dataset(data)


def test_split_csv_with_missing_files_skips_them(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 10)
    rows = [(f"{p.parent.name}/{p.name}", p.parent.name, "train" if i % 5 else "val")
            for i, p in enumerate(sorted(data.rglob("*.jpeg")))]
    rows.append(("CXR/missing.jpeg", "CXR", "train"))
    csv_path = tmp_path / "split.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    ds = scan_dataset(data, csv_path)
    assert ds.skipped == 1 and len(ds.records) == 20


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "/nonexistent/data", "--out", "OUT"],
        ["train", "--data", "DATA", "--out", "OUT", "--split-csv", "/nonexistent.csv"],
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, argv: list[str]) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 5)
    argv = [a.replace("DATA", str(data)).replace("OUT", str(tmp_path / "o")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("cbmir: error:")
    assert "Traceback" not in proc.stderr


def test_deep_stem_round_trip(tmp_path: Path) -> None:
    """At 96 px and up the recipe gives the stem a second convolution; it trains, saves and
    loads back as the same network."""
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 30)
    out = tmp_path / "model"
    args = TrainArgs(data=str(data), out=str(out), epochs=1, image_size=96, widths=[8, 16],
                     fc_dims=[32, 16], progress=False)
    train(args)
    model, cfg = load_checkpoint(out)
    assert cfg.stem_convs == 2
    convs = [m for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1)]
    # The served runner (ONNX) and the eager network agree on the deeper stem.
    emb = Embedder.load(out, device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 96, 96), dtype=np.uint8)
    eager = Embedder.load(out, device="cpu", onnx=False).embed_prepared(x)
    assert np.allclose(emb.embed_prepared(x).vectors, eager.vectors, atol=1e-4)


def test_epochs_follow_the_sample_budget_with_a_floor() -> None:
    from models.training import recipe

    assert recipe.auto_epochs(500, 200_000) == 300  # capped
    assert recipe.auto_epochs(17_695, 200_000) == 11  # the default model's set
    assert recipe.auto_epochs(47_000, 200_000) == recipe.MIN_EPOCHS == 8  # MedNIST-sized
    assert recipe.auto_epochs(1_400, 200_000) == 143  # pbc-sample, at 128 px as at 64
    assert [recipe.stem_convs(s) for s in (32, 64, 96, 128)] == [1, 1, 2, 2]


def test_balanced_sampling_draws_classes_evenly_or_by_square_root() -> None:
    from models.training import recipe

    labels = np.array([0] * 400 + [1] * 100 + [2] * 25)
    assert recipe.should_balance(labels, "auto") and not recipe.should_balance(labels, "off")
    assert not recipe.should_balance(np.array([0] * 30 + [1] * 20), "auto")
    for rule, expect in (("even", [1 / 3] * 3), ("sqrt", [20 / 35, 10 / 35, 5 / 35])):
        w = recipe.sample_weights(labels, rule)
        mass = [float(w[labels == c].sum()) for c in range(3)]
        assert np.allclose(mass, expect), (rule, mass)


def test_symmetries_are_opt_in_and_recorded(tmp_path: Path) -> None:
    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 20)
    for sym, out in (([], tmp_path / "plain"), (["flip_lr", "rot90"], tmp_path / "turned")):
        train(TrainArgs(data=str(data), out=str(out), epochs=1, widths=[8, 16],
                        fc_dims=[32, 16], symmetries=sym, progress=False))
        _, cfg = load_checkpoint(out)
        assert cfg.train_args["symmetries"] == sym
    assert "flip_lr, rot90" in (tmp_path / "turned" / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "app.cli", "train", "--data", str(data),
                           "--out", str(tmp_path / "o"), "--symmetries", "flip_lr,sideways"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected none or some of flip_lr" in proc.stderr


def test_the_whole_schedule_runs_unless_patience_is_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.training import train as train_module

    data = _copy_demo(tmp_path / "data", ["CXR", "Hand"], 20)
    real = train_module._evaluate
    # A scripted validation curve, so the stopping rule is what is tested: of the
    # annealing half (epochs 4-6), epoch 4 is best and nothing after it beats it.
    curve = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.9, 5: 0.8, 6: 0.8}
    calls: list[int] = []

    def scripted(*a: object, **k: object) -> tuple[float, float]:
        real(*a, **k)  # type: ignore[arg-type]
        calls.append(1)
        return 1.0, curve[len(calls)]

    for patience, runs in ((None, 6), (1, 5)):
        calls.clear()
        monkeypatch.setattr(train_module, "_evaluate", scripted)
        res = train(TrainArgs(data=str(data), out=str(tmp_path / f"p{patience}"), epochs=6,
                              widths=[8, 16], fc_dims=[32, 16], patience=patience,
                              progress=False))
        assert (len(res.history), res.best_epoch) == (runs, 4)
        assert res.config.train_args["patience"] == patience
