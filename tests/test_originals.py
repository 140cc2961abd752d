"""CBMIR_STORE_ORIGINALS: de-identified (PS3.15 Basic Profile, Retain UIDs) by default,
as they came, or nothing but the rendering; patient fields never in responses or logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from tests.dicomfiles import PATIENT, ct_slice, jpeg_lossless

SECRETS = ("Doe", "PID-SECRET-42", "19700101")


def _add(client: TestClient, data: bytes) -> int:
    r = client.post("/index", files={"files": ("x.dcm", data)})
    assert r.status_code == 200, r.text
    return int(r.json()["items"][0]["id"])


@pytest.mark.parametrize("encode", [lambda b: b, jpeg_lossless])
def test_deidentified_by_default(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
    caplog: pytest.LogCaptureFixture, encode: Callable[[bytes], bytes],
) -> None:
    caplog.set_level(logging.DEBUG)
    client = open_client(make_settings())
    data = encode(ct_slice("1.2.826.7", "1.2.826.7.1", 2))
    assert all(s.encode() in data for s in SECRETS)
    item_id = _add(client, data)
    stored = client.get(f"/images/{item_id}?original=true").content
    for secret in SECRETS:
        assert secret.encode() not in stored
    ds = pydicom.dcmread(io.BytesIO(stored))
    source = pydicom.dcmread(io.BytesIO(data))
    assert ds.PatientIdentityRemoved == "YES"
    assert "Retain UIDs" in ds.DeidentificationMethod
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    for name in ("PatientName", "PatientID", "PatientBirthDate"):
        assert str(ds.get(name, "")) not in {str(getattr(source, name))}
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[uid].value == source[uid].value  # Retain UIDs
    assert np.array_equal(ds.pixel_array, source.pixel_array)
    # The same instance again is still a duplicate (its identity is kept).
    r = client.post("/index", files={"files": ("x.dcm", data)})
    assert r.json()["items"][0]["duplicate"] is True
    # Nothing of the patient in any answer or log line.
    answers = [client.get(f"/images/{item_id}/info").text, client.get("/images").text,
               client.post("/search", files={"file": ("q.dcm", data)}).text]
    for text in [*answers, caplog.text]:
        assert not any(s in text for s in SECRETS)


def test_original_keeps_the_bytes(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    client = open_client(make_settings(store_originals="original"))
    data = ct_slice("1.2.826.8", "1.2.826.8.1", 2)
    item_id = _add(client, data)
    assert client.get(f"/images/{item_id}?original=true").content == data


def test_none_keeps_only_the_rendering(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    client = open_client(make_settings(store_originals="none"))
    data = ct_slice("1.2.826.9", "1.2.826.9.1", 2)
    item_id = _add(client, data)
    r = client.get(f"/images/{item_id}?original=true")
    assert r.status_code == 404 and "not kept" in r.json()["detail"]
    png = client.get(f"/images/{item_id}")
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    rendered = client.post("/render", files={"file": ("x.dcm", data)}).content
    assert png.content == rendered
    assert client.get(f"/images/{item_id}/thumbnail").status_code == 200
    assert client.get(f"/images/{item_id}/similar").status_code == 200
    files = [p for p in (client.app.state.settings.data_dir / "originals").rglob("*")  # type: ignore[attr-defined]
             if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes().startswith(b"\x89PNG")
    assert not any(s.encode() in files[0].read_bytes() for s in PATIENT.values())
    info = client.get(f"/images/{item_id}/info").json()
    assert info["dicom"]["sop_uid"]


def test_bad_policy_is_refused_at_start() -> None:
    from app.config import load_settings

    with pytest.raises(ValueError, match="CBMIR_STORE_ORIGINALS"):
        load_settings(store_originals="some")
