"""POST /index: labels, metadata, duplicates, all-or-nothing, upload limits, DICOM."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from conftest import CLASSES, demo_files, index_bytes, png_bytes, upload
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from app.config import Settings


def test_given_and_predicted_labels(client: TestClient) -> None:
    items = index_bytes(client, [png_bytes(1), png_bytes(2)], label=["Hand", ""])
    assert items[0] == {"id": 1, "label": "Hand", "label_source": "given", "duplicate": False,
                        "in_distribution": None}
    assert items[1]["label_source"] == "predicted" and items[1]["label"] in CLASSES
    items = index_bytes(client, [png_bytes(3)])
    assert items[0]["label_source"] == "predicted" and items[0]["id"] == 3


def test_real_demo_images_with_folder_labels(client: TestClient) -> None:
    paths = demo_files(per_class=1)
    files = [upload(p.name, p.read_bytes()) for p in paths]
    r = client.post("/index", files=files, data={"label": [p.parent.name for p in paths]})
    assert r.status_code == 200, r.text
    assert [it["label"] for it in r.json()["items"]] == CLASSES


def test_metadata_per_file_and_for_all(client: TestClient) -> None:
    per_file = [json.dumps({"study": "a"}), json.dumps({"study": "b"})]
    a, b = index_bytes(client, [png_bytes(1), png_bytes(2)], metadata=per_file)
    (c, d) = index_bytes(client, [png_bytes(3), png_bytes(4)], metadata=json.dumps({"site": 7}))
    r = client.post("/search", files={"file": ("q.png", png_bytes(2))},
                    params={"scope": "all", "k": 4})
    meta = {h["id"]: h["metadata"] for h in r.json()["results"]}
    assert meta[a["id"]]["study"] == "a" and meta[b["id"]]["study"] == "b"
    assert meta[c["id"]]["site"] == 7 and meta[d["id"]]["site"] == 7
    assert meta[a["id"]]["width"] == 48  # what the decoder learnt is kept beside it


def test_duplicate_returns_existing_id(client: TestClient) -> None:
    first = index_bytes(client, [png_bytes(5)], label="CXR")[0]
    again = index_bytes(client, [png_bytes(5), png_bytes(6), png_bytes(6)])
    assert again[0] == {**first, "duplicate": True}
    assert again[1]["duplicate"] is False
    assert again[2] == {**again[1], "duplicate": True}  # same bytes twice in one request
    assert client.get("/health").json()["index"]["size"] == 2


def test_count_mismatch_and_unknown_label_are_422_and_store_nothing(client: TestClient) -> None:
    files = [upload("a.png", png_bytes(1)), upload("b.png", png_bytes(2))]
    for data in ({"label": ["CXR"]}, {"label": ["CXR", "Hand", "Hand"]},
                 {"metadata": ["{}", "{}", "{}"]}, {"label": ["CXR", "Liver"]},
                 {"metadata": "[1, 2]"}, {"metadata": "{not json"}):
        r = client.post("/index", files=files, data=data)
        assert r.status_code == 422, (data, r.text)
        assert isinstance(r.json()["detail"], str)
    assert "Liver" in client.post("/index", files=files, data={"label": ["CXR", "Liver"]}).text
    assert client.get("/health").json()["index"]["size"] == 0


def test_one_bad_file_rejects_the_whole_request(client: TestClient) -> None:
    files = [upload("good.png", png_bytes(1)), upload("notes.png", b"just some text\n")]
    r = client.post("/index", files=files)
    assert r.status_code == 415
    assert "notes.png" in r.json()["detail"]
    assert client.get("/health").json()["index"]["size"] == 0


def test_bad_inputs(client: TestClient) -> None:
    assert client.post("/index", files=[upload("e.png", b"")]).status_code == 422
    assert "empty file" in client.post("/index", files=[upload("e.png", b"")]).text
    r = client.post("/index", files=[upload("t.png", b"hello, not an image")])
    assert r.status_code == 415
    truncated = png_bytes(1)[:60]
    assert client.post("/index", files=[upload("t.png", truncated)]).status_code == 422
    # Wrong field name / no files at all.
    assert client.post("/index", files=[upload("a.png", png_bytes(1), "image")]).status_code == 422
    assert client.post("/index", data={"label": "CXR"}).status_code == 422
    assert client.post("/index").status_code == 422


def test_upload_limits(make_settings: Callable[..., Settings],
                       open_client: Callable[[Settings], TestClient]) -> None:
    c = open_client(make_settings(max_upload_mb=0.05, max_files=3))  # 51 KiB
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 60_000
    r = c.post("/index", files=[upload("big.png", big)])
    assert r.status_code == 413 and "CBMIR_MAX_UPLOAD_MB" in r.json()["detail"]
    # No Content-Length (chunked): cut off while streaming.
    r = c.post("/search", content=iter([b"x" * 20_000] * 5),
               headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 413
    r = c.post("/index", files=[upload(f"{i}.png", png_bytes(i)) for i in range(4)])
    assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
    assert c.post("/index", files=[upload("ok.png", png_bytes(1))]).status_code == 200


def test_dicom_metadata_without_patient_fields(client: TestClient) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    r = client.post("/index", files=[upload("ct.dcm", data)])
    assert r.status_code == 200, r.text
    item_id = r.json()["items"][0]["id"]
    r = client.post("/search", files={"file": ("q.dcm", data)}, params={"scope": "all"})
    hit = r.json()["results"][0]
    assert hit["id"] == item_id
    assert hit["metadata"].get("modality") == "CT", hit["metadata"]
    text = json.dumps(hit["metadata"]).lower()
    assert "patient" not in text and "compressedsamples" not in text  # CT_small's name
    r = client.get(f"/images/{item_id}", params={"original": "true"})
    # Stored de-identified by default (CBMIR_STORE_ORIGINALS, tests/test_originals.py).
    assert r.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(r.content)).PatientIdentityRemoved == "YES"
    assert client.get(f"/images/{item_id}").headers["content-type"] == "image/png"
