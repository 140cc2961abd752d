"""Gallery vectors for the index benchmarks, at any size, with the model's dimension.

Real: MedNIST embeddings of a few thousand images, repeated with small Gaussian noise (see
:func:`with_noise`) and re-normalised (same dimension and class balance as a real gallery,
but any size). Queries are embeddings of held-out images, scoped by the model's predicted
class. Synthetic (clustered, 6 classes) when no data set is present: the report says which.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.data import Img
from bench.embedder import prepare_all
from models.embed import Embedder

log = logging.getLogger(__name__)

_CHUNK = 65_536
_NN_SAMPLE = 3000


@dataclass(frozen=True)
class VectorSource:
    kind: str
    base: np.ndarray  # (B, d) float32, unit rows
    base_labels: np.ndarray  # (B,) str
    queries: np.ndarray  # (Q, d) float32, unit rows
    query_labels: list[str]  # predicted class of each query (the "predicted" scope)
    noise_norm: float = 0.0  # set by with_noise()

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def describe(self) -> dict[str, object]:
        classes, counts = np.unique(self.base_labels, return_counts=True)
        return {"kind": self.kind, "dim": self.dim, "base_vectors": len(self.base),
                "queries": len(self.queries), "noise_norm": self.noise_norm,
                "classes": dict(zip(classes.tolist(), counts.tolist(), strict=True))}


def with_noise(src: VectorSource) -> VectorSource:
    """Noise norm = the median distance from a base vector to its nearest other one: each
    copy is then "another image", as close to its source as real neighbours are to each
    other (a fixed norm would be too loose for a tight model, too tight for a loose one)."""
    b = src.base[:_NN_SAMPLE]
    sim = b @ b.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sim.max(axis=1)))
    return dataclasses.replace(src, noise_norm=float(np.median(nn)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def from_images(embedder: Embedder, gallery: list[Img], queries: list[Img]) -> VectorSource:
    base = embedder.embed_prepared(prepare_all(embedder, [im.data for im in gallery]))
    q = embedder.embed_prepared(prepare_all(embedder, [im.data for im in queries]))
    classes = embedder.class_names
    pred = [classes[i] for i in np.argmax(q.probabilities, axis=1).tolist()]
    # Gallery items carry their given (folder) label, as seeded or uploaded galleries do.
    labels = np.array([im.label for im in gallery])
    return with_noise(VectorSource("real MedNIST embeddings + noise", _unit(base.vectors),
                                   labels, _unit(q.vectors), pred))


def synthetic(dim: int, classes: list[str], n_base: int, n_queries: int,
              seed: int = 0) -> VectorSource:
    """Classes of sub-clusters on the unit sphere, loosely mimicking trained embeddings."""
    rng = np.random.default_rng(seed)
    k, subs = len(classes), 20
    centres = _unit(rng.standard_normal((k, dim)))
    offsets = _unit(rng.standard_normal((k * subs, dim))).reshape(k, subs, dim)
    sub_centres = _unit((centres[:, None, :] + 0.6 * offsets).reshape(k * subs, dim))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = np.arange(n) % k
        sub = cls * subs + rng.integers(0, subs, n)
        x = sub_centres[sub] + 0.25 / np.sqrt(dim) * rng.standard_normal((n, dim))
        return _unit(x), cls

    base, base_cls = draw(n_base)
    q, q_cls = draw(n_queries)
    names = np.array(classes)
    return with_noise(VectorSource("synthetic clustered (no data set found)", base,
                                   names[base_cls], q, names[q_cls].tolist()))


def gallery_chunks(src: VectorSource, n: int, seed: int = 1
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, vectors, labels) chunks of an ``n``-item gallery; ids are 1..n."""
    rng = np.random.default_rng(seed)
    sigma = src.noise_norm / np.sqrt(src.dim)
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(n, start + _CHUNK))
        rows = idx % len(src.base)
        x = src.base[rows] + rng.standard_normal((len(idx), src.dim), dtype=np.float32) * sigma
        yield idx + 1, _unit(x), src.base_labels[rows]


def make_gallery(src: VectorSource, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.empty(n, np.int64)
    vecs = np.empty((n, src.dim), np.float32)
    labels = np.empty(n, dtype=src.base_labels.dtype)
    for chunk_ids, x, lab in gallery_chunks(src, n):
        ids[chunk_ids - 1], vecs[chunk_ids - 1], labels[chunk_ids - 1] = chunk_ids, x, lab
    return ids, vecs, labels
