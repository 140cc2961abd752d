"""Reading a snapshot's per-label FAISS files back into sub-indexes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index._subindex import LabelIndex
from index.base import IndexCorruptError


def load_into(snap: Path, meta: dict[str, Any], dim: int) -> dict[str, LabelIndex]:
    """Read every label's sub-index; any inconsistency with the sidecar is corruption."""
    try:
        return {label: _read_label(snap, entry, dim) for label, entry in meta["labels"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IndexCorruptError(f"inconsistent snapshot {snap}: {exc}") from exc


def _read_label(snap: Path, entry: dict[str, Any], dim: int) -> LabelIndex:
    path = snap / str(entry["file"])
    try:
        raw = faiss.read_index(str(path))
    except RuntimeError as exc:
        # FAISS messages span several lines (C++ stack context); keep the gist.
        gist = str(exc).strip().splitlines()[-1] if str(exc).strip() else "read error"
        raise IndexCorruptError(f"cannot read {path}: {gist}") from exc
    tombstones: list[int] = []
    if entry.get("tombstones_file"):
        tomb_path = snap / str(entry["tombstones_file"])
        try:
            tombstones = np.load(tomb_path, allow_pickle=False).astype(np.int64).tolist()
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read {tomb_path}: {exc}") from exc
    try:
        sub = LabelIndex.from_faiss(raw, trained_at=int(entry["trained_at"]), tombstones=tombstones)
    except TypeError as exc:
        raise IndexCorruptError(f"{path}: {exc}") from exc
    if int(sub.index.d) != dim:
        raise IndexCorruptError(f"{path} has dim {sub.index.d}, sidecar says {dim}")
    if len(sub) != int(entry["count"]) or sub.kind != entry["kind"]:
        raise IndexCorruptError(f"{path} does not match its sidecar entry (count/kind)")
    return sub
