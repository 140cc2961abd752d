"""Vector index for image embeddings: one FAISS sub-index per label, atomic snapshots.

Must not import ``app`` or ``models`` (dependencies point app -> models, index).
"""

from index.base import (
    IndexCorruptError,
    IndexMismatchError,
    SearchResult,
    VectorIndex,
    VectorIndexError,
)
from index.faiss_index import FaissIndex

__all__ = [
    "FaissIndex",
    "IndexCorruptError",
    "IndexMismatchError",
    "SearchResult",
    "VectorIndex",
    "VectorIndexError",
]
