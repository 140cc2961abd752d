"""The OOD scores compared by ``cbmir evaluate-ood``, fitted the same way on the same images.

* ``msp`` — 1 − the top softmax probability (Hendrycks & Gimpel 2017), the baseline.
* ``energy`` — −logsumexp of the logits (Liu et al. 2020).
* ``knn`` — 1 − cosine similarity to the k-th nearest training descriptor (Sun et al. 2022).
* ``maha-embedding``, ``maha-input``, ``maha-embedding+input`` — :mod:`models.ood`, fitted
  by :func:`models.training.calibrate.fit_scorer`, the recipe the service uses.

Each is thresholded at its own 99th percentile on validation, as calibration does.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch
from tqdm import tqdm

from models.embed import Embedder
from models.ood import METHODS, OodScorer
from models.preprocess import normalize
from models.training.calibrate import TARGET_FLAG_RATE, fit_scorer

KNN_K = 10
CANDIDATES = ("msp", "energy", "knn", *METHODS)


@dataclass(frozen=True)
class Features:
    """What each score reads: the inputs and the model's outputs for them."""

    images: np.ndarray  # uint8 (N, C, S, S)
    vectors: np.ndarray  # L2-normalised descriptors (N, D)
    probabilities: np.ndarray  # (N, K)
    logits: np.ndarray  # (N, K)

    def __len__(self) -> int:
        return len(self.images)


@torch.inference_mode()
def featurize(embedder: Embedder, images: np.ndarray, desc: str = "",
              progress: bool = False) -> Features:
    """Descriptors and probabilities from the embedder (as served); logits from the eager
    model's ``forward`` (only ``energy`` needs them, and the served head does not return
    them)."""
    vecs, probs, logits = [], [], []
    for s in tqdm(range(0, len(images), 1024), desc=desc, disable=not progress, unit="chunk",
                  mininterval=1.0):
        chunk = images[s : s + 1024]
        e = embedder.embed_prepared(chunk)
        vecs.append(e.vectors)
        probs.append(e.probabilities)
        x = normalize(torch.from_numpy(np.ascontiguousarray(chunk)).to(embedder.device),
                      embedder.config)
        logits.append(embedder.model(x).float().cpu().numpy())
    k, d = embedder.config.num_classes, embedder.embedding_dim
    return Features(images, _cat(vecs, d), _cat(probs, k), _cat(logits, k))


def _cat(parts: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty((0, width), np.float32)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


class Candidates:
    """Every candidate fitted on ``fit`` (train images) and thresholded on ``val``."""

    def __init__(self, fit: Features, fit_labels: np.ndarray, val: Features) -> None:
        self.scorers: dict[str, OodScorer] = {
            m: fit_scorer(fit.vectors, fit.images, fit_labels, val.vectors, val.images,
                          method=m).scorer
            for m in METHODS
        }
        self._bank = faiss.IndexFlatIP(fit.vectors.shape[1])
        self._bank.add(np.ascontiguousarray(fit.vectors, dtype=np.float32))
        self._k = min(KNN_K, len(fit))
        val_scores = self.scores(val)
        self.thresholds = {m: float(np.quantile(s, 1 - TARGET_FLAG_RATE))
                           for m, s in val_scores.items()}
        # The served methods keep the threshold their own recipe chose.
        self.thresholds.update({m: s.threshold for m, s in self.scorers.items()})

    def scores(self, f: Features) -> dict[str, np.ndarray]:
        out = {
            "msp": 1.0 - f.probabilities.max(axis=1),
            "energy": -_logsumexp(f.logits.astype(np.float64)),
        }
        sims, _ = self._bank.search(np.ascontiguousarray(f.vectors, np.float32), self._k)
        out["knn"] = 1.0 - sims[:, self._k - 1].astype(np.float64)
        for m, scorer in self.scorers.items():
            out[m] = scorer.score(f.vectors, f.images)
        return {m: out[m] for m in CANDIDATES}
