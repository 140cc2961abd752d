"""The "HTTP floor": the service's /search contract with no model and no index.

Same multipart upload (field ``file``), same query parameters, same response model and the
same uvicorn settings as ``cbmir serve`` (app.server.run_server), with fixed contents. What
the real service costs on top of this is the model, the index and their plumbing.
Run: ``python -m bench.floor_app --port N``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Annotated, Literal

from fastapi import FastAPI, File, Query, Response, UploadFile

from app.api.schemas import Prediction, SearchHit, SearchResponse

CLASSES = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]

app = FastAPI(title="cbmir HTTP floor")

_PREDICTION = Prediction(label=CLASSES[0], confidence=0.99,
                         probabilities={c: (0.99 if i == 0 else 0.002)
                                        for i, c in enumerate(CLASSES)})


@app.post("/search", response_model=SearchResponse)
async def search(
    file: Annotated[UploadFile, File()],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    scope: Annotated[Literal["predicted", "all"], Query()] = "predicted",
    label: Annotated[str | None, Query()] = None,
) -> Response:
    data = await file.read()  # the upload is read, as the service does
    hits = [SearchHit(id=i + 1, score=1.0 - i / 100, label=CLASSES[0], image_url=f"/images/{i+1}",
                      metadata={"bytes": len(data)}, label_source="given") for i in range(k)]
    body = SearchResponse(prediction=_PREDICTION, scope=scope, results=hits, took_ms=0.0)
    # Serialised as the service serialises it (app/api/routes/search.py).
    return Response(body.model_dump_json(), media_type="application/json")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log-level", default="info")
    a = p.parse_args()
    logging.basicConfig(level=a.log_level.upper())
    # The settings of app.server.run_server, so only the application differs.
    config = uvicorn.Config(app, host=a.host, port=a.port, workers=1, log_level=a.log_level,
                            timeout_graceful_shutdown=30, server_header=False, access_log=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
