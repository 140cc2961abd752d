"""Fitting the out-of-distribution score (:mod:`models.ood`) and its threshold.

Statistics (class means, shared covariance) are fitted on training images — and, when the
model was trained with augmentation, on one augmented copy of each as well: the network was
trained to take those renderings (windows, gamma, borders, grey, …) for the same anatomy,
so they belong to its distribution (fitted on the originals alone, the score flagged 16 to
39 % of re-windowed, equalised or bordered test images that the model still classifies
right). The scale of each part and the threshold are read off the validation split,
unaugmented and never trained on, so that about ``target`` (1 %) of it is flagged. Run at
the end of training and by ``cbmir calibrate``; the weights are never rewritten, so the
model's fingerprint, and every index built with it, stays valid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import load_config, write_config
from models.config import ModelConfig, OodConfig
from models.embed import Embedder
from models.ood import DEFAULT_METHOD, METHODS, Gaussian, OodScorer, input_statistics, save_stats
from models.training.augment import augment, make_overlays, recipe_spec
from models.training.dataset import DatasetError, Prepared, Record, load_prepared, scan_dataset

log = logging.getLogger(__name__)

TARGET_FLAG_RATE = 0.01
FIT_MAX_IMAGES = 20_000  # a 128-d covariance is settled long before; bounds the time
VAL_MAX_IMAGES = 20_000
SHRINKAGE = 1e-3  # of the mean variance added to the diagonal: constant features exist
SEED = 0
STATS_FILE = "ood.safetensors"


def fit_gaussian(x: np.ndarray, labels: np.ndarray) -> Gaussian:
    """Means of the classes present and the whitening of their pooled covariance."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(1, len(x) - len(classes))
    cov += SHRINKAGE * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    return Gaussian(means, eigvec / np.sqrt(np.maximum(eigval, 1e-12)))


def _quantile(scores: np.ndarray, target: float) -> float:
    return float(np.quantile(scores, 1.0 - target))


@dataclass(frozen=True)
class Fitted:
    scorer: OodScorer
    val_scores: np.ndarray


def fit_scorer(
    fit_vectors: np.ndarray, fit_images: np.ndarray, fit_labels: np.ndarray,
    val_vectors: np.ndarray, val_images: np.ndarray, *, method: str = DEFAULT_METHOD,
    target: float = TARGET_FLAG_RATE,
) -> Fitted:
    """A scorer from arrays (descriptors + ``uint8`` inputs): the library's one recipe."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; use one of {', '.join(METHODS)}")
    if not len(val_vectors) or not len(fit_vectors):
        raise DatasetError("calibration needs train and val images of the model's classes")
    parts = {}
    for name in METHODS[method]:
        x = fit_vectors if name == "embedding" else input_statistics(fit_images)
        parts[name] = fit_gaussian(x, fit_labels)
    scales = {name: 1.0 for name in parts}
    raw = OodScorer(method, np.inf, parts, scales).components(val_vectors, val_images)
    scales = {name: max(_quantile(d, target), 1e-12) for name, d in raw.items()}
    val_scores = np.max(np.stack([raw[n] / scales[n] for n in parts]), axis=0)
    threshold = _quantile(val_scores, target)
    return Fitted(OodScorer(method, threshold, parts, scales), val_scores)


def embed_all(embedder: Embedder, images: np.ndarray, desc: str, progress: bool) -> np.ndarray:
    chunk = 2048
    out = [embedder.embed_prepared(images[s : s + chunk]).vectors
           for s in tqdm(range(0, len(images), chunk), desc=desc, disable=not progress,
                         unit="chunk", mininterval=1.0)]
    return np.concatenate(out) if out else np.empty((0, embedder.embedding_dim), np.float32)


def fit_set(cfg: ModelConfig, images: np.ndarray, labels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The images the statistics are fitted on: ``images``, plus one augmented copy of each
    (seeded) when the model's recipe augments, at the recipe's own strength."""
    args = cfg.train_args
    if not args.get("augment"):
        return images, labels, False
    spec = recipe_spec(args.get("augment_strength"), args.get("symmetries"))
    overlays = make_overlays(cfg.image_size, seed=SEED)
    gen = torch.Generator().manual_seed(SEED)
    copies = []
    for s in range(0, len(images), 512):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + 512])).to(torch.float32) / 255
        y = augment(x, gen, spec, overlays).clamp(0, 1) * 255
        copies.append(y.round().to(torch.uint8).numpy())
    return np.concatenate([images, *copies]), np.concatenate([labels, labels]), True


def _subsample(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, limit, replace=False))


def calibrate_prepared(
    model_dir: Path, fit: Prepared, val: Prepared, *, device: str = "auto",
    method: str = DEFAULT_METHOD, data_fingerprint: str = "", progress: bool = True,
) -> ModelConfig:
    """Fit on already decoded images, write ``ood.safetensors`` and the config's ``ood``."""
    t0 = time.perf_counter()
    embedder = Embedder.load(model_dir, device=device)
    keep_fit = _subsample(len(fit.images), FIT_MAX_IMAGES)
    keep_fit = keep_fit[fit.labels[keep_fit] >= 0]
    keep_val = _subsample(len(val.images), VAL_MAX_IMAGES)
    keep_val = keep_val[val.labels[keep_val] >= 0]
    fit_x, fit_y, augmented = fit_set(embedder.config, fit.images[keep_fit],
                                      fit.labels[keep_fit])
    val_x = val.images[keep_val]
    fitted = fit_scorer(
        embed_all(embedder, fit_x, "embed for OOD fit", progress), fit_x, fit_y,
        embed_all(embedder, val_x, "embed for OOD val", progress), val_x, method=method,
    )
    scorer = fitted.scorer
    sha = save_stats(scorer.parts, scorer.scales, Path(model_dir) / STATS_FILE)
    flagged = float(np.mean(scorer.flags(fitted.val_scores)))
    cfg = load_config(model_dir).model_copy(update={"ood": OodConfig(
        method=method, threshold=scorer.threshold, target_flag_rate=TARGET_FLAG_RATE,
        val_flagged=flagged, val_images=len(keep_val), fit_images=len(fit_x),
        fit_augmented=augmented, stats_file=STATS_FILE, stats_sha256=sha,
        data_fingerprint=data_fingerprint,
    )})
    write_config(cfg, Path(model_dir))
    log.info("OOD calibration (%s): threshold %.4f, %.2f%% of %d val images flagged; fitted "
             "on %d train images%s in %.0fs", method, scorer.threshold, 100 * flagged,
             len(keep_val), len(keep_fit), " and an augmented copy of each" if augmented else "",
             time.perf_counter() - t0)
    return cfg


def limited(records: list[Record], limit: int) -> list[Record]:
    """The seeded subset calibration uses (so ``cbmir evaluate-ood`` fits the same one)."""
    return [records[i] for i in _subsample(len(records), limit)]


def calibrate_model(
    model_dir: Path, data_dir: Path, split_csv: Path | None = None, *, device: str = "auto",
    method: str = DEFAULT_METHOD, progress: bool = True,
) -> ModelConfig:
    """``cbmir calibrate``: (re)fit the OOD score of an existing model on a data set."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; use one of {', '.join(METHODS)}")
    cfg = load_config(model_dir)
    ds = scan_dataset(Path(data_dir), Path(split_csv) if split_csv else None)
    unknown = sorted(set(ds.class_names) - set(cfg.class_names))
    if unknown:
        log.warning("classes the model does not know are left out: %s", ", ".join(unknown))
    fit = load_prepared(limited(ds.split("train"), FIT_MAX_IMAGES), cfg,
                        desc="decode train", progress=progress)
    val = load_prepared(limited(ds.split("val"), VAL_MAX_IMAGES), cfg, desc="decode val",
                        progress=progress)
    if not (fit.labels >= 0).any() or not (val.labels >= 0).any():
        raise DatasetError(f"no train or val images of the model's classes in {data_dir}")
    return calibrate_prepared(model_dir, fit, val, device=device, method=method,
                              data_fingerprint=ds.fingerprint, progress=progress)
