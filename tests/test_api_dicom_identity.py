"""DICOM-native identity (issue 12): one item per SOP instance and frame, first-class UID
fields, lists and deletes by study and series, hits a viewer can open, series-aware search."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from conftest import OLD_ITEMS_TABLE
from fastapi.testclient import TestClient

from app.config import Settings
from app.service.store import Store
from tests.dicomfiles import bundled, ct_series, ct_slice, edited_header, jpeg_lossless

VIEWER = "https://viewer.example/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={series_uid}"


def index(client: TestClient, *files: bytes, **form: list[str]) -> list[dict]:
    r = client.post("/index", files=[("files", (f"f{i}.dcm", b)) for i, b in enumerate(files)],
                    data=form)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_same_instance_in_other_syntaxes_or_edited_is_one_item(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    client = open_client(make_settings(store_originals="original"))
    first = ct_slice("1.2.826.1", "1.2.826.1.1", 3)
    [a] = index(client, first)
    assert a["duplicate"] is False
    again = [jpeg_lossless(first, predictor=1), jpeg_lossless(first, predictor=6),
             edited_header(first, SeriesDescription="edited", PatientName="Other^Name"), first]
    for data in again:
        [b] = index(client, data)
        assert b == {**a, "duplicate": True}
    # Two versions of one instance in one request: one item.
    other = ct_slice("1.2.826.1", "1.2.826.1.1", 4)
    c, d = index(client, jpeg_lossless(other), other)
    assert not c["duplicate"] and d["duplicate"] and c["id"] == d["id"]
    assert client.get("/images").json()["total"] == 2
    # The first version stays: explicit VR little endian, the original description.
    stored = pydicom.dcmread(io.BytesIO(client.get(f"/images/{a['id']}?original=true").content))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert stored.SeriesDescription == "synthetic"


def test_fields_filters_links_and_deletes(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    client = open_client(make_settings(viewer_url_template=VIEWER,
                                       dicomweb_url="https://pacs.example/dicom-web/"))
    study, series, slices = ct_series(3, seed=1)
    _, series2, slices2 = ct_series(2, seed=2, study=study)
    wado = [f"http://10.0.0.9:8042/dicom-web/x/{i}" for i in range(3)]
    ids = [it["id"] for it in index(client, *slices, wado_url=wado)]
    index(client, *slices2)
    index(client, bundled("CT_small.dcm"))
    png = client.get(f"/images/{ids[0]}/thumbnail").content
    [plain] = index(client, png)

    page = client.get("/images", params={"series_uid": series}).json()
    assert page["total"] == 3 and {it["id"] for it in page["items"]} == set(ids)
    item = next(it for it in page["items"] if it["id"] == ids[1])
    sop = pydicom.dcmread(io.BytesIO(slices[1])).SOPInstanceUID
    assert item["dicom"] == {"study_uid": study, "series_uid": series, "sop_uid": sop,
                             "modality": "CT", "body_part": "CHEST",
                             "series_description": "synthetic", "instance_number": 2}
    # The WADO base is CBMIR_DICOMWEB_URL, not the address the import used.
    assert item["wado_url"] == (f"https://pacs.example/dicom-web/studies/{study}/series/{series}"
                                f"/instances/{sop}")
    assert item["viewer_url"] == VIEWER.format(study_uid=study, series_uid=series, sop_uid=sop)
    assert client.get("/images", params={"study_uid": study}).json()["total"] == 5
    assert client.get("/images", params={"sop_uid": sop}).json()["total"] == 1
    assert client.get("/images", params={"modality": "ct"}).json()["total"] == 6
    info = client.get(f"/images/{plain['id']}/info").json()
    assert info["dicom"] is None and info["wado_url"] is None and info["viewer_url"] is None
    # Not from an archive: no wado_url, a viewer URL all the same.
    other = client.get("/images", params={"series_uid": series2}).json()["items"][0]
    assert other["wado_url"] is None and other["viewer_url"]

    for bad in ({"study_uid": "1.2.x"}, {"series_uid": "'; DROP TABLE items"},
                {"sop_uid": "9" * 65}):
        r = client.get("/images", params=bad)
        assert r.status_code == 422 and "detail" in r.json()

    r = client.post("/search", files={"file": ("q.dcm", slices[0])}, params={"scope": "all"})
    hit = next(h for h in r.json()["results"] if h["id"] == ids[0])
    assert hit["dicom"]["series_uid"] == series and hit["viewer_url"].startswith("https://viewer")

    assert client.delete("/images").status_code == 422  # a filter is required
    assert client.delete("/images", params={"label": "CXR"}).status_code == 422
    r = client.delete("/images", params={"series_uid": series2})
    assert r.status_code == 200 and r.json() == {"deleted": 2}
    r = client.delete("/images", params={"study_uid": study})
    assert r.json() == {"deleted": 3}
    assert client.get("/images", params={"study_uid": study}).json()["total"] == 0
    assert client.get(f"/images/{ids[0]}").status_code == 404
    assert client.get("/images").json()["total"] == 2
    # Deleted ones can be added again (the key is gone with the row).
    assert not index(client, slices[0])[0]["duplicate"]


def test_group_by_series_and_exclude_study(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient]
) -> None:
    client = open_client(make_settings())
    query_study, query_series, query_slices = ct_series(3, seed=5)
    for n in range(3):
        _, _, slices = ct_series(25, seed=10 + n)
        for start in range(0, 25, 13):
            index(client, *slices[start:start + 13])
    index(client, *query_slices)
    q = {"file": ("q.dcm", query_slices[0])}

    flat = client.post("/search", files=q, params={"k": 5, "scope": "all"}).json()["results"]
    assert len(flat) == 5 and all(h["series_hits"] is None for h in flat)

    r = client.post("/search", files=q, params={"k": 3, "scope": "all", "group_by": "series"})
    grouped = r.json()["results"]
    assert len(grouped) == 3
    assert len({h["dicom"]["series_uid"] for h in grouped}) == 3
    assert [h["score"] for h in grouped] == sorted((h["score"] for h in grouped), reverse=True)
    # 60 candidates (20 x k) among 78 slices: the counts add up to at most that.
    assert all(h["series_hits"] >= 1 for h in grouped)
    assert sum(h["series_hits"] for h in grouped) <= 60

    for params in ({"exclude_study": query_study}, {"exclude_same_study": "true"}):
        r = client.post("/search", files=q, params={"k": 10, "scope": "all", **params})
        hits = r.json()["results"]
        assert len(hits) == 10 and all(h["dicom"]["study_uid"] != query_study for h in hits)
    png = client.get("/images/1").content
    r = client.post("/search", files={"file": ("q.png", png)},
                    params={"exclude_same_study": "true"})
    assert r.status_code == 200 and any("exclude_same_study" in w for w in r.json()["warnings"])
    bad = client.post("/search", files=q, params={"group_by": "study"})
    assert bad.status_code == 422


def test_version_1_store_gains_the_columns(tmp_path: Path) -> None:
    """A data dir of the previous schema opens: the DICOM fields come from its metadata."""
    db = sqlite3.connect(tmp_path / "cbmir.sqlite3")
    db.executescript(OLD_ITEMS_TABLE + """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    md = {"modality": "CT", "body_part": "CHEST", "study_instance_uid": "1.2.3",
          "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5", "frames": 3}
    for i, sha in enumerate(("a" * 64, "b" * 64)):  # the same SOP twice (old byte identity)
        db.execute("INSERT INTO items (sha256, label, label_source, content_type, format, "
                   "metadata, vector, created_at) VALUES (?, 'CXR', 'given', 'application/dicom',"
                   " 'dicom', ?, x'00', 't')", (sha, json.dumps({**md, "n": i})))
    db.execute("INSERT INTO items (sha256, label, label_source, content_type, format, metadata,"
               " vector, created_at) VALUES (?, 'CXR', 'given', 'image/png', 'png', '{}', x'00',"
               " 't')", ("c" * 64,))
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        first, second, png = (store.get(i) for i in (1, 2, 3))
        assert first and first.dicom and first.dicom.sop_uid == "1.2.3.4.5"
        assert first.dicom.frame == 2 and first.dicom.series_uid == "1.2.3.4"
        assert second and second.dicom is None  # the key is unique: the oldest keeps it
        assert png and png.dicom is None and png.stored_as == "original"
        assert store.meta()["schema_version"] == "3"  # and on to the deletion log
        assert set(store.find_sop([("1.2.3.4.5", 2)])) == {("1.2.3.4.5", 2)}
    finally:
        store.close()
    Store(tmp_path).close()  # opens again (migrated once)


@pytest.mark.parametrize("template", ["https://v/{patient_id}", "ftp://v/{study_uid}", "{"])
def test_bad_viewer_template_is_refused_at_start(template: str) -> None:
    from app.config import load_settings

    with pytest.raises(ValueError, match="CBMIR_VIEWER_URL_TEMPLATE"):
        load_settings(viewer_url_template=template)
