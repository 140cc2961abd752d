"""Optional GPU mirrors of flat sub-indexes (needs a faiss-gpu build).

The CPU index stays the source of truth: GPU indexes support neither ID
selectors nor removal, so after every mutation of a label its mirror is simply
re-copied. Only exact flat sub-indexes are mirrored, hence GPU and CPU results
agree (up to float rounding).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import faiss
import numpy as np

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda", "auto"]
#: Largest k the FAISS GPU k-select supports; larger searches fall back to CPU.
GPU_MAX_K = 2048


def gpu_count() -> int:
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def use_gpu(device: str) -> bool:
    """Resolve the ``device`` setting; "cuda" without GPU FAISS is a config error."""
    if device == "cpu":
        return False
    if device == "auto":
        return gpu_count() > 0
    if device == "cuda":
        if gpu_count() == 0:
            raise ValueError(
                "device='cuda' requested but FAISS has no usable GPU "
                "(install the 'gpu' extra, faiss-gpu, on a CUDA machine, or use device='cpu')"
            )
        return True
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', not {device!r}")


class GpuMirrors:
    """Per-label GPU copies of flat CPU indexes.

    ``copy`` turns a CPU index into its mirror; it defaults to a copy onto GPU
    0 and exists so that the bookkeeping can be tested on CPU-only machines.
    """

    def __init__(self, copy: Callable[[Any], Any] | None = None) -> None:
        if copy is None:
            res = faiss.StandardGpuResources()
            copy = partial(faiss.index_cpu_to_gpu, res, 0)
        self._copy = copy
        self._mirrors: dict[str, Any] = {}
        # One GpuResources is not safe for concurrent use from several threads.
        self._lock = threading.Lock()

    def refresh(self, label: str, cpu_index: Any | None) -> None:
        """Re-copy ``label``'s index (None drops it); caller holds the write lock."""
        self._mirrors.pop(label, None)
        if cpu_index is not None and cpu_index.ntotal > 0:
            self._mirrors[label] = self._copy(cpu_index)

    def append(self, label: str, ids: np.ndarray, x: np.ndarray) -> bool:
        """Append to an existing mirror (GPU flat indexes can add, not remove)."""
        mirror = self._mirrors.get(label)
        if mirror is None:
            return False
        with self._lock:
            mirror.add_with_ids(x, ids)
        return True

    def search(self, label: str, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """GPU search of ``label``, or None when it has no mirror or k is too large."""
        mirror = self._mirrors.get(label)
        if mirror is None or k > GPU_MAX_K:
            return None
        with self._lock:
            scores, ids = mirror.search(x, k)
        return scores, ids
