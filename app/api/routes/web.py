"""The web page: ``GET /`` (the page) and its files under ``/web/`` (app/web, no build step).

The page is a client of the API like any other: it holds no data, so it stays open with
``CBMIR_API_KEY_FOR_READS`` (as ``/docs`` does) and asks for the key when the API does.
Its Content-Security-Policy allows nothing but this origin (the service runs air-gapped,
and a page showing medical images should not be framed or load foreign scripts).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter(include_in_schema=False)

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag), so a new version shows at once
}


@router.api_route("/", methods=["GET", "HEAD"])
def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=HEADERS)


def mount_web_files(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
