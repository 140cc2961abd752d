"""Find similar: rank the gallery with a stored item's own vector, the item left out.

The ranking uses the vector stored in SQLite (exactly the one in the index, so the item
would be its own top hit, which is dropped). The prediction (class and probabilities) is
the model's answer for the stored image, so the response is the one ``POST /search`` gives
for that image: scope ``predicted`` means the class the model predicts, not the stored
label (which a curator may have changed).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.service.errors import NotFound
from app.service.search import Scope, Searcher, SearchOutcome
from app.service.uploads import prepare_query
from models.embed import Embedding


def _stored(searcher: Searcher, item_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The item's stored vector (1, D) and its model-ready image."""
    store = searcher.store
    item = store.get(item_id)
    data = store.read_original(item) if item is not None else None
    if item is None or data is None:
        raise NotFound(f"no image with id {item_id}")
    chunks = list(store.vectors(searcher.index.dim, np.array([item_id])))
    if not chunks:  # deleted since the row was read
        raise NotFound(f"no image with id {item_id}")
    return chunks[0][1], prepare_query(data, searcher.embedder)


async def similar(
    searcher: Searcher, item_id: int, k: int, scope: Scope, label: str | None
) -> SearchOutcome:
    searcher.check_label(label)
    with searcher.metrics.stage.labels("decode").time():
        vector, query = await run_in_threadpool(_stored, searcher, item_id)
    emb = await searcher.batcher.embed(query[None])
    stored = Embedding(vector, emb.probabilities)
    out = await run_in_threadpool(searcher.rank, stored, k + 1, scope, label, query[None])
    hits = [h for h in out.hits if h.id != item_id][:k]
    return dataclasses.replace(out, hits=hits)
