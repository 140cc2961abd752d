"""FAISS implementation of :class:`index.base.VectorIndex`.

One sub-index per label (see :mod:`index._subindex`), so that the service's
classify-then-search flow only scans the predicted labels. Searching all labels
merges the per-label top-k lists, which is exact: the top-k of a union is the
top-k of the union of each part's top-k.

About 350 lines, over the ~300 a module here keeps to: it is the whole public surface of
the backend (add, remove, search, save, load and their locking) over the helpers in the
``_*`` modules; cutting it would split one lock discipline across files.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import faiss
import numpy as np

from index import _validate as check
from index import storage
from index._gpu import Device, GpuMirrors, use_gpu
from index._idmap import IdMap
from index._loader import load_into
from index._rwlock import RWLock
from index._subindex import Kind, LabelIndex, Policy, new_flat, rebuilt
from index.base import IndexCorruptError, IndexMismatchError, SearchResult

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_KINDS = ("flat", "ivf", "hnsw")


class FaissIndex:
    """Labelled inner-product index; thread-safe (shared search, exclusive writes)."""

    backend = "faiss"

    def __init__(
        self,
        dim: int,
        *,
        model_fingerprint: str = "",
        index_type: Literal["flat", "ivf", "hnsw"] = "flat",
        approx_min_size: int = 20_000,
        nprobe: int | None = None,
        device: Device = "cpu",
        hnsw_m: int = 16,
        ef_search: int = 128,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if index_type not in _KINDS:
            raise ValueError(f"index_type must be one of {_KINDS}, got {index_type!r}")
        if approx_min_size < 1:
            raise ValueError(f"approx_min_size must be >= 1, got {approx_min_size}")
        if nprobe is not None and nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if hnsw_m < 2 or ef_search < 1:
            raise ValueError("hnsw_m must be >= 2 and ef_search >= 1")
        self.dim = dim
        self.model_fingerprint = model_fingerprint
        self.extra: dict[str, Any] = {}
        self._policy = Policy(dim, index_type, approx_min_size, nprobe, hnsw_m, ef_search)
        self._subs: dict[str, LabelIndex] = {}
        self._owner = IdMap()  # id -> label code, for duplicate checks and removal
        self._codes: dict[str, int] = {}  # label -> code; codes are never reused
        self._names: list[str] = []  # code -> label
        # Searches share _lock; add/remove take it exclusively. _mutate is also
        # held by writers, and by save() *instead of* _lock: a save then excludes
        # mutations without registering as a reader, so a writer queued behind a
        # long save cannot stall searches (the RW lock prefers waiting writers).
        self._lock = RWLock()
        self._mutate = threading.Lock()
        self._saving = threading.Lock()  # one save at a time (snapshot numbering)
        self._gpu = GpuMirrors() if use_gpu(device) else None
        # len() without a lock: health probes and metrics scrapes must never queue behind
        # a writer (an int attribute is read atomically; it is written under both locks).
        self._count = 0

    @property
    def index_type(self) -> Kind:
        return self._policy.index_type

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, index_type={self.index_type!r}, n={len(self)})"

    # -- mutation -----------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, labels: Sequence[str] | str) -> None:
        """Add ``vectors`` under new, unique ``ids``; a str ``labels`` labels them all."""
        id_arr = check.as_ids(ids)
        x = check.as_vectors(vectors, self.dim)
        if len(id_arr) != len(x):
            raise ValueError(f"got {len(id_arr)} ids but {len(x)} vectors")
        label_list = check.as_labels(labels, len(id_arr))
        if len(id_arr) == 0:
            return
        uniq, counts = np.unique(id_arr, return_counts=True)
        if len(uniq) != len(id_arr):
            raise ValueError(f"duplicate ids in batch: {uniq[counts > 1][:5].tolist()}")
        groups: dict[str, Any] = {}
        for row, label in enumerate(label_list):
            groups.setdefault(label, []).append(row)
        if len(groups) == 1:  # the usual case: no need to copy the batch
            groups = dict.fromkeys(groups, slice(None))
        with self._mutate:
            touched: list[tuple[str, tuple[np.ndarray, np.ndarray]]] = []
            with self._lock.write():
                present = self._owner.present(id_arr)
                if len(present):
                    raise ValueError(f"ids already in the index: {present[:5].tolist()}")
                for label, rows in groups.items():
                    sub = self._subs.get(label)
                    if sub is None:
                        sub = self._subs[label] = new_flat(self.dim)
                    part_ids, part_x = id_arr[rows], x[rows]
                    sub.add(part_ids, part_x, self._policy)
                    self._owner.add(part_ids.tolist(), self._code(label))
                    touched.append((label, (part_ids, part_x)))
                self._count = len(self._owner)
            for label, added in touched:
                self._after_mutation(label, added=added)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were removed."""
        id_arr = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        with self._mutate:
            with self._lock.write():
                found, codes = self._owner.pop(id_arr)
                labels = [self._names[code] for code in np.unique(codes).tolist()]
                for code, label in zip(np.unique(codes).tolist(), labels, strict=True):
                    self._subs[label].remove(found[codes == code])
                self._count = len(self._owner)
            for label in labels:
                self._after_mutation(label)
        return len(found)

    def _code(self, label: str) -> int:
        code = self._codes.get(label)
        if code is None:
            code = self._codes[label] = len(self._names)
            self._names.append(label)
        return code

    def _after_mutation(
        self, label: str, added: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        """Drop an emptied label, apply the rebuild policy, update its GPU mirror.

        Called holding ``_mutate`` but not ``_lock``: a rebuild (28 s for an IVF retrain at
        1M vectors) or a repack reads the old sub-index while searches go on using it,
        since no other writer can change it, and only the swap takes the write lock.

        ``added`` is what was just appended, if that is all that happened: the
        mirror can then be appended to instead of copied again in full.
        """
        sub = self._subs[label]
        replacement = rebuilt(sub, self._policy, swap=self._lock.write) if len(sub) else None
        with self._lock.write():
            if replacement is not None:
                sub = self._subs[label] = replacement
                added = None
            if len(sub) == 0:
                del self._subs[label]
            if self._gpu is None:
                return
            if label not in self._subs or sub.kind != "flat":
                self._gpu.refresh(label, None)
            elif added is None or not self._gpu.append(label, *added):
                self._gpu.refresh(label, sub.index)

    # -- queries ------------------------------------------------------------

    def search(
        self, vectors: np.ndarray, k: int, labels: Sequence[str] | None = None
    ) -> SearchResult:
        """Top-``k`` ids by inner product, within ``labels`` if given (unknown ones: empty)."""
        x = check.as_vectors(vectors, self.dim, what="query vectors")
        k = check.as_k(k)
        wanted = [labels] if isinstance(labels, str) else labels
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with self._lock.read():
            names = sorted(self._subs) if wanted is None else list(dict.fromkeys(wanted))
            for name in names:
                sub = self._subs.get(name)
                if sub is None or len(x) == 0:
                    continue
                hit = self._gpu.search(name, x, k) if self._gpu is not None else None
                parts.append(hit if hit is not None else sub.search(x, k, self._policy))
        return _merge(parts, len(x), k)

    def ids(self) -> np.ndarray:
        with self._lock.read():
            return self._owner.all_ids()

    def missing(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Those of ``ids`` that are not in the index (e.g. a write whose add failed)."""
        id_arr = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        with self._lock.read():
            present = self._owner.present(id_arr)
        return np.setdiff1d(id_arr, present)

    def label_counts(self) -> dict[str, int]:
        with self._lock.read():
            return {label: len(sub) for label, sub in sorted(self._subs.items())}

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per-label internals (kind, count, tombstones, ...) for health pages and tests."""
        with self._lock.read():
            return {
                label: {
                    "kind": sub.kind,
                    "count": len(sub),
                    "trained_at": sub.trained_at,
                    "tombstones": len(sub.tombstones),
                    "gpu": self._gpu is not None and sub.kind == "flat",
                }
                for label, sub in sorted(self._subs.items())
            }

    # -- persistence --------------------------------------------------------

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether ``directory`` holds a published snapshot (it may still be corrupt)."""
        try:
            snap = storage.current_snapshot(Path(directory))
        except IndexCorruptError:
            return False
        return snap is not None and (snap / storage.SIDECAR).is_file()

    def save(
        self,
        directory: Path,
        *,
        extra: Mapping[str, Any] | None = None,
        before_publish: Callable[[], None] | None = None,
        unlocked: Callable[[], None] | None = None,
    ) -> None:
        """Atomically write a snapshot; ``extra`` (JSON) is stored and returned by load.

        Mutations wait only while the index files are written (into the page cache, from
        the live index: no copy in memory); fsync, hashing and publishing follow with the
        lock let go, and ``unlocked`` is called there. Searches never wait (see __init__).
        ``before_publish``: see :func:`index.storage.write_snapshot`.
        """
        payload = dict(self.extra if extra is None else extra)
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extra must be JSON-serialisable: {exc}") from exc
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._mutate.release()
                if unlocked is not None:
                    unlocked()

        with self._saving:
            self._mutate.acquire()
            try:
                self._save_locked(Path(directory), payload, before_publish, release)
            finally:
                if held:
                    held = False
                    self._mutate.release()
            self.extra = payload

    def _save_locked(
        self, directory: Path, payload: dict[str, Any],
        before_publish: Callable[[], None] | None, release: Callable[[], None],
    ) -> None:
        """The snapshot as ``save`` describes, entered holding ``_mutate``."""
        files: dict[str, storage.FileWriter] = {}
        labels: dict[str, Any] = {}
        for i, (label, sub) in enumerate(sorted(self._subs.items())):
            name = f"label-{i:04d}"
            files[f"{name}.faiss"] = _index_writer(sub.index)
            tomb = None
            if sub.tombstones:
                tomb = f"{name}.tombstones.npy"
                files[tomb] = _array_writer(np.fromiter(sub.tombstones, np.int64))
            labels[label] = {
                "file": f"{name}.faiss",
                "count": len(sub),
                "kind": sub.kind,
                "trained_at": sub.trained_at,
                "tombstones_file": tomb,
            }
        sidecar = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "metric": "ip",
            "index_type": self.index_type,
            "approx_min_size": self._policy.approx_min_size,
            "nprobe": self._policy.nprobe,
            "count": len(self._owner),
            "labels": labels,
            "model_fingerprint": self.model_fingerprint,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "faiss_version": faiss.__version__,
            "extra": payload,
        }
        storage.write_snapshot(directory, files, sidecar, before_publish, release)

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        model_fingerprint: str | None = None,
        dim: int | None = None,
        index_type: Literal["flat", "ivf", "hnsw"] | None = None,
        approx_min_size: int | None = None,
        nprobe: int | None = None,
        device: Device = "cpu",
    ) -> Self:
        """Load the published snapshot; settings left as None come from the sidecar.

        Raises IndexMismatchError if ``model_fingerprint`` or ``dim`` is given and
        differs from the sidecar, IndexCorruptError if anything cannot be read.
        """
        snap, meta = storage.open_snapshot(Path(directory))
        try:
            stored_dim, stored_fp = int(meta["dim"]), str(meta["model_fingerprint"])
            if meta["format_version"] != FORMAT_VERSION or meta["metric"] != "ip":
                raise ValueError(f"unsupported format {meta['format_version']}/{meta['metric']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"invalid sidecar in {snap}: {exc}") from exc
        if dim is not None and dim != stored_dim:
            raise IndexMismatchError(f"index in {snap} has dim {stored_dim}, expected {dim}")
        if model_fingerprint is not None and model_fingerprint != stored_fp:
            raise IndexMismatchError(
                f"index in {snap} was built for model {stored_fp!r}, not {model_fingerprint!r}"
            )
        try:
            index = cls(
                stored_dim,
                model_fingerprint=stored_fp,
                index_type=index_type or meta["index_type"],
                approx_min_size=approx_min_size or int(meta["approx_min_size"]),
                nprobe=nprobe if nprobe is not None else meta["nprobe"],
                device=device,
            )
        except (KeyError, TypeError) as exc:
            raise IndexCorruptError(f"invalid sidecar in {snap}: {exc}") from exc
        subs = load_into(snap, meta, stored_dim)
        with index._mutate:
            with index._lock.write():
                index._subs = subs
                for label, sub in subs.items():
                    ids = sub.live_ids()
                    if len(index._owner.present(ids)):
                        raise IndexCorruptError(
                            f"label {label!r} in {snap} repeats ids of another")
                    index._owner.add(ids.tolist(), index._code(label))
                if len(index._owner) != meta.get("count"):
                    raise IndexCorruptError(f"sidecar count in {snap} does not match its files")
                index._count = len(index._owner)
                index.extra = dict(meta.get("extra") or {})
            for label in list(subs):
                index._after_mutation(label)  # applies changed settings, mirrors to GPU
        logger.info("loaded index from %s: %d vectors, %d labels", snap, len(index), len(subs))
        return index


def _index_writer(index: Any) -> storage.FileWriter:
    return lambda path: faiss.write_index(index, str(path))


def _array_writer(array: np.ndarray) -> storage.FileWriter:
    def write(path: Path) -> None:
        with path.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)

    return write


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], q: int, k: int) -> SearchResult:
    """Merge per-label ``(scores, ids)`` top-k lists into one descending top-k."""
    if not parts:
        return SearchResult.empty(q, k)
    scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32, copy=False)
    ids = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64, copy=False)
    # FAISS pads with -FLT_MAX; normalise to the documented -inf.
    scores[ids < 0] = -np.inf
    if len(parts) > 1:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
    return SearchResult(ids=np.ascontiguousarray(ids), scores=np.ascontiguousarray(scores))
