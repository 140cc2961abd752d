"""Out-of-distribution score: is a query like the images the model was trained on?

Softmax confidence cannot say: a blood-cell slide comes back as a chest X-ray at 0.94. The
score combines two Mahalanobis distances (class means, one shared covariance), each fitted
on training images and scaled by its own 99th percentile on the validation split:

* ``embedding`` — of the L2-normalised descriptor, the vector the index already holds.
  It catches images whose content the network has never seen.
* ``input`` — of low-level statistics of the model's input: per channel, a 16-bin
  intensity histogram and a 16-bin histogram of neighbour differences, in log. It catches
  what the network maps onto a known class although nothing in it is anatomy: blank
  exports and noise become a smooth grey that a MedNIST model files as ChestCT.

``maha-embedding+input`` (the default) takes the larger of the two scaled distances, so
the score is in units of "the unusual end of validation": above ``threshold`` (set so
that about 1 % of validation images are flagged) the query is out of distribution. Both
parts need nothing but the model's ordinary outputs, so any model the embedder loads is
covered. The choice was measured (``cbmir evaluate-ood``; README, OOD section).
The statistics live in ``ood.safetensors`` beside the weights, named and hashed in
``config.json`` (:class:`~models.config.OodConfig`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from models.config import ModelConfig, OodConfig

log = logging.getLogger(__name__)

COMPONENTS = ("embedding", "input")
METHODS: dict[str, tuple[str, ...]] = {
    "maha-embedding+input": COMPONENTS,
    "maha-embedding": ("embedding",),
    "maha-input": ("input",),
}
DEFAULT_METHOD = "maha-embedding+input"

BINS = 16
# The statistics are read on at most a 32×32 grid of samples per channel (every step-th
# pixel): 1,024 samples settle a 16-bin histogram, and the cost per query stays a few tens
# of microseconds whatever the model's input size.
GRID = 32
# Absolute difference of neighbouring samples, in grey levels: 0 (flat) apart, then about
# log-spaced. Looked up per value into bins BINS..2·BINS-1; the table is laid out so that
# a signed difference d indexes it directly (d mod 511), which saves taking |d| first.
GRADIENT_EDGES = np.array([1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181])
_ABS_BIN = (np.searchsorted(GRADIENT_EDGES, np.arange(256), side="right") + BINS).astype(np.intp)
_GRADIENT_BIN = np.concatenate([_ABS_BIN, _ABS_BIN[1:][::-1]])
_INTENSITY_BIN = (np.arange(256) * BINS // 256).astype(np.intp)
LOG_FLOOR = 1e-3  # log(share + floor): an empty bin is very unusual, not infinitely so


class OodStatsError(ValueError):
    """The calibration named in ``config.json`` is missing or does not match its file."""


def input_statistics(images: np.ndarray) -> np.ndarray:
    """``uint8`` (N, C, S, S) model inputs → float32 (N, 32·C) log histograms.

    Per channel, on the sampling grid: intensity in 16 equal bins, and the absolute
    difference of vertical and of horizontal neighbours in 16 bins, each as shares.
    """
    n, c, size = images.shape[0], images.shape[1], images.shape[2]
    step = max(1, size // GRID)
    k = n * c
    grid = images[:, :, ::step, ::step]
    rows, cols = grid.shape[2], grid.shape[3]
    x = grid.reshape(k, rows, cols).astype(np.int16)
    # Neighbours one row apart are ``cols`` apart in the flattened grid, and neighbours one
    # column apart are ``rows`` apart in its transpose: two contiguous subtractions.
    flat, flat_t = x.reshape(k, -1), x.transpose(0, 2, 1).reshape(k, -1)
    codes = np.concatenate([
        _INTENSITY_BIN.take(flat),
        _GRADIENT_BIN.take(flat[:, cols:] - flat[:, :-cols], mode="wrap"),
        _GRADIENT_BIN.take(flat_t[:, rows:] - flat_t[:, :-rows], mode="wrap"),
    ], axis=1)
    if k > 1:
        codes += np.arange(k, dtype=np.intp)[:, None] * (2 * BINS)
    counts = np.bincount(codes.ravel(), minlength=2 * BINS * k).reshape(k, 2 * BINS)
    samples = rows * cols
    per = np.repeat([1.0 / samples, 1.0 / (codes.shape[1] - samples)], BINS)
    return np.log(counts * per + LOG_FLOOR).astype(np.float32).reshape(n, -1)


class Gaussian:
    """Class means and a whitening matrix W (W Wᵀ = Σ⁻¹ of the shared covariance)."""

    def __init__(self, means: np.ndarray, whiten: np.ndarray) -> None:
        self.means = np.asarray(means, dtype=np.float32)  # (K, D)
        self.whiten = np.asarray(whiten, dtype=np.float32)  # (D, D)
        # Precomputed once: the distance to every class is then one (D, D) and one (D, K)
        # product per query.
        m = self.means @ self.whiten
        self._minus_2mt = np.ascontiguousarray(-2.0 * m.T)
        self._m2 = np.square(m).sum(1)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``x`` to its nearest class mean."""
        z = np.asarray(x, dtype=np.float32) @ self.whiten
        d = z @ self._minus_2mt
        d += self._m2
        return np.maximum(d.min(axis=1) + np.einsum("ij,ij->i", z, z), 0.0)


@dataclass(frozen=True)
class OodScorer:
    """A calibrated score: ``score(vectors, images) > threshold`` is out of distribution."""

    method: str
    threshold: float
    parts: dict[str, Gaussian]
    scales: dict[str, float]

    def components(self, vectors: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's distance divided by its scale (1.0 = validation's 99th percentile)."""
        out: dict[str, np.ndarray] = {}
        for name in METHODS[self.method]:
            x = vectors if name == "embedding" else input_statistics(images)
            out[name] = self.parts[name].distance(x) / self.scales[name]
        return out

    def score(self, vectors: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Higher = more unusual; float64 (N,). ``vectors`` are the model's descriptors,
        ``images`` the ``uint8`` (N, C, S, S) inputs they came from."""
        parts = iter(self.components(vectors, images).values())
        out = next(parts).astype(np.float64)
        for more in parts:
            np.maximum(out, more, out=out)
        return out

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where out of distribution."""
        return np.asarray(scores > self.threshold)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_stats(parts: dict[str, Gaussian], scales: dict[str, float], path: Path) -> str:
    """Write the statistics (safetensors: never a pickle); returns the file's sha256."""
    tensors: dict[str, np.ndarray] = {}
    for name, g in parts.items():
        tensors[f"{name}.means"] = np.ascontiguousarray(g.means, dtype=np.float32)
        tensors[f"{name}.whiten"] = np.ascontiguousarray(g.whiten, dtype=np.float32)
        tensors[f"{name}.scale"] = np.array([scales[name]], dtype=np.float64)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "cbmir-ood", "parts": ",".join(parts)})
    tmp.chmod(0o644)  # like the weights: a model directory is meant to be shared
    tmp.replace(path)
    return _sha256(path)


def load_scorer(model_dir: Path, cfg: ModelConfig) -> OodScorer | None:
    """The model's calibrated scorer, or None when it has no calibration."""
    ood: OodConfig | None = cfg.ood
    if ood is None:
        return None
    if ood.method not in METHODS:
        raise OodStatsError(f"unknown OOD method {ood.method!r} in {model_dir}/config.json")
    path = Path(model_dir) / ood.stats_file
    if not path.is_file():
        raise OodStatsError(f"no {ood.stats_file} in model directory {model_dir}")
    if _sha256(path) != ood.stats_sha256:
        raise OodStatsError(f"{path} does not match the hash recorded in config.json")
    try:
        t = load_file(str(path))
    except SafetensorError as e:
        raise OodStatsError(f"{path} is not a safetensors file: {e}") from None
    parts, scales = {}, {}
    for name in METHODS[ood.method]:
        if f"{name}.means" not in t:
            raise OodStatsError(f"{path} has no {name!r} statistics for method {ood.method}")
        parts[name] = Gaussian(t[f"{name}.means"], t[f"{name}.whiten"])
        scales[name] = float(t[f"{name}.scale"][0])
    emb = parts.get("embedding")
    if emb is not None and emb.means.shape != (cfg.num_classes, cfg.embedding_dim):
        raise OodStatsError(f"{path} was fitted for another model (shape {emb.means.shape})")
    return OodScorer(ood.method, ood.threshold, parts, scales)
