"""Compact id -> label-code map.

The index needs to know which label owns an id (duplicate checks, removal).
A Python dict costs ~76 bytes per id (16% of a 128-d float32 vector); here the
bulk lives in sorted numpy arrays (12 bytes per id) and only recent inserts sit
in a small dict that is merged in once it reaches 1/16 of the arrays, so each
insert costs amortised O(1) numpy work.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_MERGE_MIN = 4096
_DEAD = -1


class IdMap:
    def __init__(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)  # sorted
        self._codes = np.empty(0, dtype=np.int32)  # label code, _DEAD once removed
        self._live = 0  # live entries in the arrays
        self._recent: dict[int, int] = {}

    def __len__(self) -> int:
        return self._live + len(self._recent)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``ids`` in the arrays, and which of them are live there."""
        n = len(self._ids)
        if n == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=np.intp), np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, ids), n - 1)
        return pos, (self._ids[pos] == ids) & (self._codes[pos] != _DEAD)

    def present(self, ids: np.ndarray) -> np.ndarray:
        """Ids from ``ids`` that are already mapped."""
        _, hit = self._find(ids)
        recent = np.fromiter((i in self._recent for i in ids.tolist()), bool, count=len(ids))
        return ids[hit | recent]

    def add(self, ids: Iterable[int], code: int) -> None:
        """Map new ids (the caller checked they are absent) to ``code``."""
        self._recent.update(dict.fromkeys(ids, code))
        if len(self._recent) >= max(_MERGE_MIN, len(self._ids) // 16):
            self._merge()

    def pop(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unmap the known ids among unique ``ids``; returns ``(ids, codes)`` found."""
        pos, hit = self._find(ids)
        found_ids = [ids[hit]]
        found_codes = [self._codes[pos[hit]]]
        self._codes[pos[hit]] = _DEAD
        self._live -= int(hit.sum())
        rest = [(i, self._recent.pop(i)) for i in ids[~hit].tolist() if i in self._recent]
        if rest:
            found_ids.append(np.array([i for i, _ in rest], dtype=np.int64))
            found_codes.append(np.array([c for _, c in rest], dtype=np.int32))
        return np.concatenate(found_ids), np.concatenate(found_codes)

    def all_ids(self) -> np.ndarray:
        recent = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        return np.concatenate([self._ids[self._codes != _DEAD], recent])

    def _merge(self) -> None:
        # Also drops dead entries, so removals never accumulate.
        keep = self._codes != _DEAD
        new_ids = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        new_codes = np.fromiter(self._recent.values(), dtype=np.int32, count=len(self._recent))
        ids = np.concatenate([self._ids[keep], new_ids])
        codes = np.concatenate([self._codes[keep], new_codes])
        order = np.argsort(ids, kind="stable")
        self._ids, self._codes = ids[order], codes[order]
        self._live = len(self._ids)
        self._recent = {}
