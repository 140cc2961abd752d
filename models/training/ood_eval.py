"""``cbmir evaluate-ood``: how well each OOD score tells unknown images from known ones.

In distribution: the test split of the model's data set. Against it:

* **far OOD** — folders of other images (``--far NAME=PATH``, e.g. pbc-sample, other
  modalities) and synthetic inputs (:mod:`models.training.ood_synthetic`);
* **shifted** — images of a known class from elsewhere (``--shifted``): only the share
  flagged and what they are classified as, since "right" depends on the model;
* **re-rendered** — test images of known classes re-windowed, gamma-corrected, equalised,
  bordered, … (``--renderings N`` per class): the share flagged is a false alarm where
  the model still classifies them right;
* **near OOD** — leave one class out (``--near CLASS``): a quick model (the evaluated
  model's own recipe, few epochs, a subset) is trained without the class, and its test
  images are scored against the other classes' test images.

Every candidate (:mod:`models.training.ood_candidates`) is fitted on the train split and
thresholded on val, as calibration does. Figures: AUROC, FPR at 95 % TPR, share flagged,
and the time the served score adds per query. Written to ``ood_report.json`` and
``ood_report.md`` by :mod:`models.training.ood_report`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.embed import Embedder
from models.imaging.decode import read_image_file
from models.imaging.formats import is_image_file
from models.ood import DEFAULT_METHOD
from models.preprocess import prepare
from models.training.calibrate import FIT_MAX_IMAGES, VAL_MAX_IMAGES, fit_set, limited
from models.training.dataset import DatasetError, DatasetIndex, Record, load_prepared, scan_dataset
from models.training.ood_candidates import CANDIDATES, Candidates, Features, featurize
from models.training.ood_metrics import auroc, flagged, fpr_at_tpr
from models.training.ood_renderings import RENDERINGS
from models.training.ood_report import write_ood_report
from models.training.ood_synthetic import KINDS, synthetic_set
from models.training.train import TrainArgs, train

log = logging.getLogger(__name__)

SEED = 0
LATENCY_QUERIES = 500


@dataclass(frozen=True)
class NearOptions:
    classes: list[str]
    epochs: int = 4
    train_per_class: int = 500
    val_per_class: int = 150
    test_per_class: int = 300


@dataclass(frozen=True)
class OodEvalOptions:
    far: list[tuple[str, Path]] = field(default_factory=list)
    shifted: list[tuple[str, Path]] = field(default_factory=list)
    synthetic: int = 100
    renderings: int = 20
    max_per_set: int = 1000
    near: NearOptions | None = None
    device: str = "auto"
    progress: bool = True


def _pick(items: list[Any], n: int | None, salt: str = "") -> list[Any]:
    """A seeded subset of at most ``n``, in the original order (reruns score the same)."""
    if n is None or len(items) <= n:
        return items
    rng = np.random.default_rng([SEED, *salt.encode()])
    return [items[i] for i in np.sort(rng.choice(len(items), n, replace=False))]


def _folder_records(path: Path, limit: int) -> list[Record]:
    if not path.is_dir():
        raise DatasetError(f"not a directory: {path}")
    files = sorted(p for p in path.rglob("*") if is_image_file(p))
    if not files:
        raise DatasetError(f"no image files under {path}")
    return [Record(p, "", "test") for p in _pick(files, limit, str(path))]


def _decode(records: list[Record], cfg: ModelConfig, desc: str, progress: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    prep = load_prepared(records, cfg, desc=desc, progress=progress)
    return prep.images, prep.labels


def _known(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = labels >= 0
    return images[keep], labels[keep]


def _detection(cands: Candidates, ind: dict[str, np.ndarray], out: dict[str, np.ndarray]
               ) -> dict[str, dict[str, float]]:
    return {m: {"auroc": auroc(ind[m], out[m]), "fpr95": fpr_at_tpr(ind[m], out[m]),
                "flagged": flagged(out[m], cands.thresholds[m])} for m in CANDIDATES}


def _classified_as(f: Features, names: list[str]) -> dict[str, float]:
    counts = Counter(names[i] for i in f.probabilities.argmax(axis=1))
    return {c: n / len(f) for c, n in counts.most_common(3)}


def _reference(embedder: Embedder, ds: DatasetIndex, opts: OodEvalOptions
               ) -> tuple[Candidates, Features]:
    """Candidates fitted on train, thresholded on val; the in-distribution test features."""
    cfg, p = embedder.config, opts.progress
    fit_x, fit_y = _known(*_decode(limited(ds.split("train"), FIT_MAX_IMAGES), cfg,
                                   "decode train", p))
    val_x, _ = _known(*_decode(limited(ds.split("val"), VAL_MAX_IMAGES), cfg, "decode val", p))
    test_x, _ = _known(*_decode(ds.split("test"), cfg, "decode test", p))
    if not len(fit_x) or not len(val_x) or not len(test_x):
        raise DatasetError("need train, val and test images of the model's classes")
    fit_x, fit_y, _ = fit_set(cfg, fit_x, fit_y)  # as calibration fits it
    cands = Candidates(featurize(embedder, fit_x, "features train", p), fit_y,
                       featurize(embedder, val_x, "features val", p))
    return cands, featurize(embedder, test_x, "features test", p)


QUICK_BATCH = 32
QUICK_EMA_DECAY = 0.99


def _recipe(cfg: ModelConfig, **over: Any) -> TrainArgs:
    """The evaluated model's own training arguments (architecture, input, optimiser,
    augmentation), so the quick leave-one-out models are the same kind of model. What only
    suits a long run is shortened with the run: batches of 32, so a few epochs of a subset
    are still several hundred steps, and a weight average over ~100 steps instead of the
    recipe's (at 0.998 the average of a 120-step run is mostly its initial weights: 0.90
    val accuracy where the model reaches 0.99)."""
    skip = {"data", "out", "split_csv", "epochs", "batch_size", "name", "progress", "patience"}
    base = {k: v for k, v in cfg.train_args.items() if k in TrainArgs.model_fields
            and k not in skip}
    if base and "balance_rule" not in base:
        # Recorded before the rule was an argument: the square root was the only rule then.
        base["balance_rule"] = "sqrt"
    if not base:  # a model made without `cbmir train`: its architecture, training's defaults
        base = {"arch": cfg.arch, "widths": cfg.widths, "depths": cfg.depths or None,
                "fc_dims": cfg.fc_dims, "channels": cfg.in_channels,
                "image_size": cfg.image_size, "dropout": cfg.dropout}
    quick: dict[str, Any] = {"batch_size": QUICK_BATCH}
    if "ema_decay" in TrainArgs.model_fields:
        quick["ema_decay"] = min(float(base.get("ema_decay", 1.0)), QUICK_EMA_DECAY)
    return TrainArgs(**{**base, **quick, **over})


def _near_one(ds: DatasetIndex, held: str, cfg: ModelConfig, near: NearOptions,
              work: Path, opts: OodEvalOptions) -> dict[str, Any]:
    keep = [c for c in ds.class_names if c != held]
    records: list[Record] = []
    for c in keep:
        for split, n in (("train", near.train_per_class), ("val", near.val_per_class),
                         ("test", near.test_per_class)):
            records += _pick([r for r in ds.records if r.label == c and r.split == split],
                             n, f"{held}:{c}:{split}")
    held_test = _pick([r for r in ds.records if r.label == held and r.split == "test"],
                      opts.max_per_set, f"{held}:held")
    if not held_test:
        raise DatasetError(f"class {held!r} has no test images to hold out")
    sub = DatasetIndex(ds.root, records, keep, f"{ds.fingerprint}-without-{held}", 0)
    out = work / f"without-{held}"
    t0 = time.perf_counter()
    res = train(_recipe(cfg, data=str(ds.root), out=str(out), epochs=near.epochs,
                        device=opts.device, progress=opts.progress, name=f"without-{held}"),
                dataset=sub)
    seconds = time.perf_counter() - t0
    emb = Embedder.load(out, device=opts.device)
    ref_opts = OodEvalOptions(progress=False)
    cands, test = _reference(emb, sub, ref_opts)
    held_x, _ = _decode(held_test, emb.config, "decode held-out", False)
    ind, ood = cands.scores(test), cands.scores(featurize(emb, held_x))
    log.info("near OOD without %s: AUROC %.4f (%s), quick model val acc %.4f, %.0fs", held,
             auroc(ind[DEFAULT_METHOD], ood[DEFAULT_METHOD]), DEFAULT_METHOD,
             res.config.metrics["val_accuracy"], seconds)
    return {"class": held, "images": len(held_x), "in_distribution_images": len(test),
            "val_accuracy": res.config.metrics["val_accuracy"],
            "train_seconds": round(seconds, 1), "train_images": len(sub.split("train")),
            "epochs": near.epochs, "model_dir": str(out), "methods": _detection(cands, ind, ood)}


def _rerendered(embedder: Embedder, cands: Candidates, ds: DatasetIndex, per_class: int
                ) -> dict[str, Any]:
    cfg, names = embedder.config, embedder.config.class_names
    sample = [r for c in names for r in _pick(
        [r for r in ds.split("test") if r.label == c], per_class, f"render:{c}")]
    images: dict[str, list[np.ndarray]] = {name: [] for name in RENDERINGS}
    labels = []
    for r in sample:
        try:
            img = read_image_file(r.path).image
        except (OSError, ValueError):
            continue
        for name, render in RENDERINGS.items():
            images[name].append(prepare(render(img), cfg))
        labels.append(names.index(r.label))
    out: dict[str, Any] = {}
    for name, imgs in images.items():
        if not imgs:
            continue
        f = featurize(embedder, np.stack(imgs))
        s = cands.scores(f)
        out[name] = {"images": len(f), "accuracy": float(np.mean(
            f.probabilities.argmax(axis=1) == np.array(labels))),
            "flagged": {m: flagged(s[m], cands.thresholds[m]) for m in CANDIDATES}}
    return out


def _latency(cands: Candidates, test: Features) -> dict[str, Any]:
    """Microseconds the served score adds to one query, scored alone as /search does."""
    scorer = cands.scorers[DEFAULT_METHOD]
    n = min(LATENCY_QUERIES, len(test))
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        scorer.score(test.vectors[i : i + 1], test.images[i : i + 1])
        times.append(time.perf_counter() - t0)
    return {"method": DEFAULT_METHOD, "queries": n, "median_us": 1e6 * statistics.median(times),
            "p90_us": 1e6 * float(np.quantile(times, 0.9))}


def run_ood_evaluation(model_dir: Path, data_dir: Path, split_csv: Path | None, out_dir: Path,
                       opts: OodEvalOptions) -> dict[str, Any]:
    """Evaluate every candidate; write ``ood_report.json`` and ``ood_report.md``."""
    embedder = Embedder.load(model_dir, device=opts.device)
    cfg = embedder.config
    ds = scan_dataset(Path(data_dir), split_csv)
    for c in opts.near.classes if opts.near else []:
        if c not in ds.class_names:
            raise DatasetError(f"--near {c!r} is not a class of {data_dir}")
    far_records = {name: _folder_records(path, opts.max_per_set) for name, path in opts.far}
    shifted_records = {name: _folder_records(path, opts.max_per_set)
                       for name, path in opts.shifted}
    cands, test = _reference(embedder, ds, opts)
    ind = cands.scores(test)
    names = cfg.class_names

    far: dict[str, Any] = {}
    sets = {name: _decode(recs, cfg, f"decode {name}", opts.progress)[0]
            for name, recs in far_records.items()}
    for kind in KINDS if opts.synthetic else ():
        pictures = synthetic_set(kind, opts.synthetic, SEED)
        sets[f"synthetic {kind}"] = np.stack([prepare(im, cfg) for im in pictures])
    scored = {}
    for name, x in sets.items():
        f = featurize(embedder, x, f"features {name}", opts.progress)
        scored[name] = cands.scores(f)
        far[name] = {"images": len(f), "classified_as": _classified_as(f, names),
                     "methods": _detection(cands, ind, scored[name])}
    pooled = {m: np.concatenate([s[m] for s in scored.values()]) for m in CANDIDATES
              } if scored else {}
    shifted = {}
    for name, recs in shifted_records.items():
        f = featurize(embedder, _decode(recs, cfg, f"decode {name}", opts.progress)[0])
        s = cands.scores(f)
        shifted[name] = {"images": len(f), "classified_as": _classified_as(f, names),
                         "flagged": {m: flagged(s[m], cands.thresholds[m]) for m in CANDIDATES}}

    rerendered = _rerendered(embedder, cands, ds, opts.renderings) if opts.renderings else {}
    near = ([_near_one(ds, c, cfg, opts.near, Path(out_dir) / "near", opts)
             for c in opts.near.classes] if opts.near else [])
    report: dict[str, Any] = {
        "model": {"name": cfg.name, "fingerprint": cfg.fingerprint, "classes": names,
                  "stored_ood": cfg.ood.model_dump() if cfg.ood else None},
        "data": {"root": str(data_dir), "split_csv": str(split_csv) if split_csv else None,
                 "test_images": len(test), "fingerprint": ds.fingerprint},
        "chosen": DEFAULT_METHOD,
        "methods": list(CANDIDATES),
        "thresholds": cands.thresholds,
        "in_distribution": {m: {"flagged": flagged(ind[m], cands.thresholds[m])}
                            for m in CANDIDATES},
        "far": far,
        "far_pooled": {m: {"auroc": auroc(ind[m], pooled[m]), "fpr95": fpr_at_tpr(ind[m],
                                                                                  pooled[m])}
                       for m in pooled},
        "shifted": shifted,
        "rerendered": rerendered,
        "near": near,
        "latency": _latency(cands, test),
        "options": {"max_per_set": opts.max_per_set, "synthetic_per_kind": opts.synthetic,
                    "renderings_per_class": opts.renderings,
                    "near": vars(opts.near) if opts.near else None},
    }
    write_ood_report(report, Path(out_dir))
    return report
