"""GET /images/{id}/thumbnail (small, cached, ETag) and POST /render (stores nothing)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from conftest import demo_files, index_bytes, png_bytes
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings


def _big_png() -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (600, 400), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_thumbnail_is_a_small_png_with_an_etag(client: TestClient) -> None:
    big, small = index_bytes(client, [_big_png(), png_bytes(1)])
    r = client.get(f"/images/{big['id']}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (171, 256)  # 400x600, longest side 256
    etag = r.headers["etag"]
    assert etag.startswith('"') and "max-age" in r.headers["cache-control"]
    # A small image is never enlarged.
    r2 = client.get(f"/images/{small['id']}/thumbnail")
    assert Image.open(io.BytesIO(r2.content)).size == (48, 48)
    assert r2.headers["etag"] != etag
    # The cached answer is the same bytes.
    assert client.get(f"/images/{big['id']}/thumbnail").content == r.content


def test_if_none_match_gives_304(client: TestClient) -> None:
    (item,) = index_bytes(client, [png_bytes(1)])
    url = f"/images/{item['id']}/thumbnail"
    etag = client.get(url).headers["etag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = client.get(url, headers={"If-None-Match": value})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, value
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_thumbnail_of_unknown_or_deleted_id_is_404(client: TestClient) -> None:
    (item,) = index_bytes(client, [png_bytes(1)])
    url = f"/images/{item['id']}/thumbnail"
    etag = client.get(url).headers["etag"]
    assert client.delete(f"/images/{item['id']}").status_code == 204
    assert client.get(url).status_code == 404
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 404
    assert client.get("/images/999/thumbnail").json() == {"detail": "no image with id 999"}


def test_render_is_what_the_service_would_store(client: TestClient) -> None:
    jpeg = demo_files(per_class=1)[2].read_bytes()
    r = client.post("/render", files={"file": ("q.jpeg", jpeg)})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get("/health").json()["index"]["size"] == 0
    assert client.get("/images").json()["total"] == 0
    (item,) = index_bytes(client, [jpeg])
    assert client.get(f"/images/{item['id']}").content == r.content


def test_render_refuses_what_upload_refuses(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
) -> None:
    client = open_client(make_settings(max_upload_mb=1))
    r = client.post("/render", files={"file": ("notes.png", b"just some text")})
    assert r.status_code == 415
    assert r.json() == {"detail": "file: not a supported image (PNG, JPEG, TIFF, BMP or DICOM)"}
    assert client.post("/render", files={"file": ("e.png", b"")}).status_code == 422
    assert client.post("/render", files={"image": ("q.png", png_bytes(1))}).status_code == 422
    r = client.post("/render", files={"file": ("big.png", b"\x89PNG" + b"0" * 1_100_000)})
    assert r.status_code == 413 and "CBMIR_MAX_UPLOAD_MB" in r.json()["detail"]
