"""Input checks with messages a REST client can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def as_vectors(vectors: Any, dim: int, *, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 ``(n, dim)`` array; a 1-D vector is one row."""
    x = np.asarray(vectors)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {tuple(np.shape(vectors))}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def as_ids(ids: Any) -> np.ndarray:
    """Return ``ids`` as a 1-D int64 array of non-negative integers (-1 means "no result")."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in int64")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError("ids must be non-negative")
    return arr


def as_labels(labels: Sequence[str] | str, n: int) -> list[str]:
    """One label per vector; a single string labels the whole batch."""
    out = [labels] * n if isinstance(labels, str) else list(labels)
    if len(out) != n:
        raise ValueError(f"got {n} ids/vectors but {len(out)} labels")
    for label in out:
        if not isinstance(label, str) or not label:
            raise ValueError(f"labels must be non-empty strings, got {label!r}")
    return out


def as_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)
