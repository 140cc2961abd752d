"""Access and data protection: the API key (refusals, constant-time comparison, never
logged), CORS only when configured, uploads and DICOM patient fields kept out of logs,
stored metadata and JSON responses, size limits enforced while the body streams, and
model weights loaded without unpickling.
"""

from __future__ import annotations

import hmac
import io
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import torch
from conftest import png_bytes
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file
from serverproc import ServerProc, server_env

from app.config import Settings
from app.main import create_app
from app.service.store import DB_FILE
from models.checkpoint import CheckpointError, load_checkpoint
from models.config import CONFIG_FILE, WEIGHTS_FILE

KEY = "cbmir-Key-7f3a9c1e5b2d"
# Refused keys: different length, same prefix, one character off, case, other encodings.
WRONG_KEYS: list[str | bytes | None] = [
    None, "", "x", KEY[:-1], KEY + "0", KEY[:-1] + "e", KEY.upper(), KEY.lower(),
    KEY[:8], "Bearer " + KEY, KEY.encode() + b"\xe9", b"\xff" * len(KEY),
]
UNAUTHORIZED = "missing or invalid X-API-Key header"
# Patient fields of pydicom's CT_small.dcm, and of a file built here with sentinels.
CT_SMALL_PATIENT = ["CompressedSamples^CT1", "1CT1"]
SENTINELS = ["Sentinel^Patient", "PID-SENTINEL-4242", "19010203", "1 Sentinel Street"]
BYTES_MARKER = "UPLOADED-BYTES-MARKER-93c1"


def _headers(key: str | bytes | None) -> dict[str, Any]:
    return {} if key is None else {"X-API-Key": key}


def _png_with_text(seed: int, text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(seed))).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _ct_small() -> bytes:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    return Path(str(path)).read_bytes()


def _dicom_with_sentinels() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_ct_small()))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SENTINELS[:3]
    ds.PatientAddress = SENTINELS[3]
    ds.OtherPatientIDs = SENTINELS[1] + "-OTHER"
    ds.InstanceNumber = 99  # other bytes than CT_small itself
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# --- a real server with a key, at DEBUG level ----------------------------------------------


@pytest.fixture(scope="module")
def keyed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("keyed")
    env = server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp / "data"),
                     CBMIR_API_KEY=KEY, CBMIR_LOG_LEVEL="DEBUG", CBMIR_MAX_UPLOAD_MB="1")
    with ServerProc(env, tmp / "server.log") as srv:
        yield srv.start()


def test_writes_need_the_exact_key_which_is_never_logged(keyed: ServerProc) -> None:
    files = [("files", ("a.png", png_bytes(1)))]
    with keyed.client() as http:
        size = http.get("/health").json()["index"]["size"]
        for key in WRONG_KEYS:
            r = http.post("/index", files=files, headers=_headers(key))
            assert r.status_code == 401, (key, r.text)
            assert r.json() == {"detail": UNAUTHORIZED}
            assert r.headers["www-authenticate"] == "X-API-Key"
            assert http.delete("/images/1", headers=_headers(key)).status_code == 401
        assert http.get("/health").json()["index"]["size"] == size  # nothing got in
        r = http.post("/index", files=files, headers={"x-api-key": KEY})  # any header case
        assert r.status_code == 200, r.text
        item_id = r.json()["items"][0]["id"]
        assert http.post("/search", files={"file": ("q.png", png_bytes(1))}).status_code == 200
        assert http.delete(f"/images/{item_id}", headers={"X-API-Key": KEY}).status_code == 204
    log = keyed.log()
    assert "401" in log  # the refusals were logged ...
    assert KEY not in log and KEY.lower() not in log and KEY[:-1] not in log  # ... not the key


def test_key_comparison_is_constant_time(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    c = open_client(make_settings(api_key=KEY))
    for key in (KEY[:-1], KEY + "0", KEY):
        c.delete("/images/1", headers={"X-API-Key": key})
    assert calls == [(k.encode(), KEY.encode()) for k in (KEY[:-1], KEY + "0", KEY)]


def test_oversized_bodies_are_refused_while_streaming(keyed: ServerProc) -> None:
    sent = 0

    def body() -> Iterator[bytes]:  # a 32 MiB file part, no Content-Length (chunked)
        nonlocal sent
        yield b'--zz\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
        for _ in range(512):
            sent += 1
            yield b"\0" * 65536

    r = httpx.post(f"{keyed.url}/index", content=body(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=zz",
                            "X-API-Key": KEY})
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == "request body is larger than the 1 MB limit (CBMIR_MAX_UPLOAD_MB)"
    assert sent * 65536 < 8 << 20, f"the server read {sent * 64} KiB before refusing"

    # A declared Content-Length over the limit is refused before any body byte is sent.
    with socket.create_connection(("127.0.0.1", int(keyed.url.rsplit(":", 1)[1])), 10) as s:
        s.sendall(b"POST /index HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n"
                  b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n")
        s.settimeout(10)
        assert s.recv(200).startswith(b"HTTP/1.1 413 ")
    assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200


def test_patient_fields_and_uploaded_bytes_stay_out_of_logs_metadata_and_responses(
    keyed: ServerProc, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    auth = {"X-API-Key": KEY}
    secrets = CT_SMALL_PATIENT + SENTINELS + [BYTES_MARKER]
    responses: list[str] = []
    with keyed.client() as http:
        files = [("files", ("ct.dcm", _ct_small())), ("files", ("s.dcm", _dicom_with_sentinels())),
                 ("files", ("t.png", _png_with_text(5, BYTES_MARKER)))]
        r = http.post("/index", files=files, headers=auth,
                      data={"metadata": json.dumps({"study": "demo"})})
        assert r.status_code == 200, r.text
        responses.append(r.text)
        # Refused uploads whose bytes carry the marker: their bytes must not be logged either.
        for name, data in [("m.png", _png_with_text(6, BYTES_MARKER)[:-40]),
                           ("m.txt", f"{BYTES_MARKER}\n".encode() * 50),
                           ("m.dcm", _dicom_with_sentinels()[:-300])]:
            r = http.post("/index", files=[("files", (name, data))], headers=auth)
            assert r.status_code in (415, 422), r.text
            responses.append(r.text)
        for q in (_ct_small(), _dicom_with_sentinels()):
            r = http.post("/search", files={"file": ("q.dcm", q)},
                          params={"scope": "all", "k": 10})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["metadata"]["modality"] == "CT"
            responses.append(r.text)
        responses.append(http.get("/health").text)
        responses.append(http.get("/metrics").text)
    db = sqlite3.connect(f"file:{Path(keyed.env['CBMIR_DATA_DIR']) / DB_FILE}?mode=ro", uri=True)
    try:
        stored = json.dumps(db.execute("SELECT metadata, label, format FROM items").fetchall())
    finally:
        db.close()
    assert "modality" in stored and "demo" in stored
    log = keyed.log()
    for secret in secrets:
        for where, text in (("log", log), ("stored metadata", stored),
                            ("responses", "\n".join(responses))):
            assert secret not in text, f"{secret!r} found in the {where}"
    assert "patient" not in stored.lower()


# --- in-process: CORS, reads behind the key, weights ---------------------------------------


def test_no_cors_headers_unless_configured(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
) -> None:
    origin = "https://viewer.example.org"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    closed = open_client(make_settings())
    for r in (closed.get("/health", headers={"Origin": origin}),
              closed.options("/search", headers=preflight)):
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers

    c = open_client(make_settings(cors_origins=[origin], data_dir=make_settings().data_dir.
                                  with_name("data-cors")))
    r = c.get("/health", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in r.headers
    r = c.options("/search", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    other = "https://evil.example.com"
    assert "access-control-allow-origin" not in c.get("/health", headers={"Origin": other}).headers
    r = c.options("/search", headers={**preflight, "Origin": other})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_with_key_for_reads_every_route_but_health_and_metrics_needs_the_key(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
) -> None:
    c = open_client(make_settings(api_key=KEY, api_key_for_reads=True))
    r = c.post("/index", files=[("files", ("a.png", png_bytes(1)))], headers={"X-API-Key": KEY})
    item_id = r.json()["items"][0]["id"]
    body: dict[str, Any] = {
        "files": [("file", ("q.png", png_bytes(1))), ("files", ("q.png", png_bytes(2)))]
    }
    checked = []
    # Every operation the API declares (a new route that forgets the key fails here).
    for path, operations in c.get("/openapi.json").json()["paths"].items():
        if path in ("/health", "/metrics"):
            continue
        url = path.replace("{item_id}", str(item_id))
        for method in sorted(operations):
            kw = body if method == "post" else {"json": {"label": "Hand"}} if (
                method == "patch") else {}
            for key in (None, "wrong", KEY[:-1]):
                r = c.request(method, url, headers=_headers(key), **kw)
                assert r.status_code == 401, (method, path, key, r.text)
                assert r.json() == {"detail": UNAUTHORIZED}
            checked.append((method, path))
            if method != "delete":
                r = c.request(method, url, headers={"X-API-Key": KEY}, **kw)
                assert r.status_code == 200, (method, path, r.text)
    assert sorted(checked) == [
        ("delete", "/images"), ("delete", "/images/{item_id}"), ("get", "/images"),
        ("get", "/images/{item_id}"),
        ("get", "/images/{item_id}/info"), ("get", "/images/{item_id}/similar"),
        ("get", "/images/{item_id}/thumbnail"), ("patch", "/images/{item_id}"),
        ("post", "/index"), ("post", "/render"), ("post", "/search"),
    ]
    for path in ("/health", "/metrics"):
        assert c.get(path).status_code == 200


class _Evil:
    """Unpickling this creates a file: the proof that a loader ran pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("rehash", [True, False], ids=["hash-updated", "hash-stale"])
def test_pickled_weights_are_refused_never_unpickled(
    tiny_model: Path, tmp_path: Path, make_settings: Callable[..., Settings], rehash: bool,
) -> None:
    import hashlib
    import shutil

    model_dir = tmp_path / "pickled-model"
    shutil.copytree(tiny_model, model_dir)
    pwned = tmp_path / "unpickled"
    weights = model_dir / WEIGHTS_FILE
    torch.save({"conv.weight": _Evil(pwned)}, weights)  # a pickle named model.safetensors
    if rehash:  # as if the attacker also rewrote config.json's recorded hash
        cfg = json.loads((model_dir / CONFIG_FILE).read_text())
        cfg["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        (model_dir / CONFIG_FILE).write_text(json.dumps(cfg))
    expected = "is not a safetensors file" if rehash else "does not match the hash"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(model_dir)
    # The service reports it as a failed start with that one line.
    with TestClient(create_app(make_settings(model_dir=model_dir))) as c:
        assert c.app.state.loader.done.wait(60)  # type: ignore[attr-defined]
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert expected in r.json()["detail"] and str(weights) in r.json()["detail"]
    assert not pwned.exists()
