"""The vector-index contract the service layer codes against.

Kept free of FAISS so that the service (and its tests) can depend on the
interface alone; :mod:`index.faiss_index` provides the implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of a batch of queries.

    ``ids`` is int64 ``(q, k)``, padded with ``-1`` where fewer than ``k``
    items exist; ``scores`` is float32 ``(q, k)``, the inner product (the
    cosine similarity for L2-normalised vectors), padded with ``-inf`` and
    sorted in descending order along each row.
    """

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, q: int, k: int) -> SearchResult:
        """All-padding result, e.g. for an empty index or unknown labels."""
        return cls(
            ids=np.full((q, k), -1, dtype=np.int64),
            scores=np.full((q, k), -np.inf, dtype=np.float32),
        )


class VectorIndexError(Exception):
    """Base class of the errors raised when loading or validating an index."""


class IndexMismatchError(VectorIndexError):
    """The stored index was built for another model (fingerprint) or dimension."""


class IndexCorruptError(VectorIndexError):
    """The stored index cannot be loaded (missing, truncated or altered files)."""


@runtime_checkable
class VectorIndex(Protocol):
    """A labelled, persistent inner-product index of int64-keyed vectors."""

    dim: int
    #: Caller data stored with the last snapshot saved or loaded.
    extra: dict[str, Any]

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, labels: Sequence[str] | str) -> None:
        """Add vectors; ``ids`` must be new and unique (``ValueError`` otherwise)."""
        ...

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ids, ignoring unknown ones; returns how many were removed."""
        ...

    def search(
        self, vectors: np.ndarray, k: int, labels: Sequence[str] | None = None
    ) -> SearchResult:
        """Top-``k`` by inner product, over ``labels`` only when given."""
        ...

    def ids(self) -> np.ndarray: ...

    def label_counts(self) -> dict[str, int]: ...

    def save(
        self,
        directory: Path,
        *,
        extra: Mapping[str, Any] | None = None,
        before_publish: Callable[[], None] | None = None,
    ) -> None:
        """Write a snapshot atomically; ``before_publish`` is called once it is complete on
        disk but not yet published (the point a crash must survive; tests inject one)."""
        ...

    @classmethod
    def load(cls, directory: Path, *, model_fingerprint: str | None = None) -> Self: ...
