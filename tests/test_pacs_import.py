"""``cbmir index --dicomweb`` against a real Orthanc: pydicom's files and a synthetic
series stored in it, imported, then searched; re-runs, ``--to`` a real ``cbmir serve``,
and the bad inputs (unreachable archive, undecodable instance, malformed QIDO)."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.config import Settings
from tests.dicomfiles import bundled, ct_series, jpeg_lossless, with_syntax
from tests.orthanc import Orthanc, start_orthanc
from tests.serverproc import CBMIR, ServerProc, free_port, server_env

VIEWER = "https://viewer.example/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={series_uid}"
BUNDLED = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm")


@dataclass
class Archive:
    orthanc: Orthanc
    series: dict[str, tuple[str, list[bytes]]]  # series UID -> (study UID, slices)
    bundled: int
    undecodable: int


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        series: dict[str, tuple[str, list[bytes]]] = {}
        study_a, series_a, slices_a = ct_series(24, seed=1)
        _, series_b, slices_b = ct_series(6, seed=2, study=study_a)
        study_c, series_c, slices_c = ct_series(20, seed=3)
        series.update({series_a: (study_a, slices_a), series_b: (study_a, slices_b),
                       series_c: (study_c, slices_c)})
        orthanc.stow_rs(slices_a)
        orthanc.stow(slices_b + [jpeg_lossless(s) for s in slices_c])
        orthanc.stow([bundled(n) for n in BUNDLED])
        # Stored fine by the archive, undecodable here (a video syntax): a counted skip.
        _, _, [odd] = ct_series(1, seed=4)
        orthanc.stow([with_syntax(odd, "1.2.840.10008.1.2.4.100")])
        yield Archive(orthanc, series, len(BUNDLED), 1)
    finally:
        orthanc.kill()


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
         *args: str) -> tuple[int, dict, str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else {}), err


@pytest.fixture
def local_env(tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    return {"CBMIR_MODEL_DIR": str(tiny_model), "CBMIR_DATA_DIR": str(tmp_path / "data"),
            "CBMIR_SEED_DEMO": "false", "CBMIR_DEVICE": "cpu"}


def test_import_then_search(
    archive: Archive, local_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], make_settings: Callable[..., Settings],
    open_client: Callable[[Settings], TestClient], tmp_path: Path,
) -> None:
    total = sum(len(s) for _, s in archive.series.values()) + archive.bundled + 1
    code, counts, err = _run(monkeypatch, capsys, local_env, "index", "--dicomweb",
                             archive.orthanc.dicomweb, "--no-progress")
    assert code == 0, err
    assert counts["instances"] == total
    assert counts["added"] == total - archive.undecodable
    assert counts["failed"] == archive.undecodable and counts["listing_errors"] == 0
    assert "Traceback" not in err
    # A re-run fetches nothing.
    code, again, _ = _run(monkeypatch, capsys, local_env, "index", "--dicomweb",
                          archive.orthanc.dicomweb, "--no-progress")
    assert code == 0 and again["already_stored"] == total - archive.undecodable
    assert again["added"] == 0 and again["failed"] == archive.undecodable

    client = open_client(make_settings(data_dir=tmp_path / "data", viewer_url_template=VIEWER))
    assert client.get("/images").json()["total"] == total - archive.undecodable
    (series_a, (study_a, slices_a)), _, (series_c, (study_c, slices_c)) = archive.series.items()
    page = client.get("/images", params={"series_uid": series_c}).json()
    assert page["total"] == 20
    item = page["items"][0]
    assert item["wado_url"].startswith(f"{archive.orthanc.dicomweb}/studies/{study_c}/series/")
    assert item["dicom"]["study_uid"] == study_c

    q = {"file": ("q.dcm", slices_a[3])}
    hits = client.post("/search", files=q, params={"k": 5, "scope": "all"}).json()["results"]
    assert hits[0]["dicom"]["sop_uid"] == pydicom.dcmread(io.BytesIO(slices_a[3])).SOPInstanceUID
    assert all(h["viewer_url"] == VIEWER.format(study_uid=h["dicom"]["study_uid"],
                                                series_uid=h["dicom"]["series_uid"])
               for h in hits if h["dicom"])
    grouped = client.post("/search", files=q,
                          params={"k": 3, "scope": "all", "group_by": "series"}).json()["results"]
    series_seen = [h["dicom"]["series_uid"] if h["dicom"] else h["id"] for h in grouped]
    assert len(series_seen) == len(set(series_seen)) == 3
    assert grouped[0]["dicom"]["series_uid"] == series_a and grouped[0]["series_hits"] > 1
    others = client.post("/search", files=q, params={"k": 10, "scope": "all",
                                                     "exclude_same_study": "true"}).json()
    assert all(h["dicom"] is None or h["dicom"]["study_uid"] != study_a
               for h in others["results"])
    assert len(others["results"]) == 10
    # The same instance in another transfer syntax is the stored item.
    r = client.post("/index", files={"files": ("x.dcm", jpeg_lossless(slices_a[0], predictor=3))})
    assert r.json()["items"][0]["duplicate"] is True
    # The stored originals hold no patient field.
    for path in (tmp_path / "data" / "originals").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            assert ds.PatientIdentityRemoved == "YES"
            assert "Doe" not in str(ds.get("PatientName", ""))
            assert ds.get("PatientID", "") != "PID-SECRET-42"
            assert ds.get("PatientBirthDate", "") != "19700101"


def test_import_to_a_running_service(archive: Archive, tiny_model: Path, tmp_path: Path) -> None:
    key = "archive-key-0123456789"
    env = server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp_path / "srv"),
                     CBMIR_API_KEY=key)
    study_a, _ = next(iter(archive.series.values()))
    with ServerProc(env, tmp_path / "server.log").start() as server:
        cmd = [CBMIR, "index", "--dicomweb", archive.orthanc.dicomweb, "--to", server.url,
               "--study", study_a, "--modality", "CT", "--no-progress"]
        out = subprocess.run(cmd, env={**env, "CBMIR_DATA_DIR": str(tmp_path / "unused")},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        counts = json.loads(out.stdout)
        assert counts["instances"] == 30 and counts["added"] == 30
        with server.client() as c:
            assert c.get("/images", params={"study_uid": study_a}).json()["total"] == 30
        assert not (tmp_path / "unused").exists()  # nothing written beside the service
        with server.client() as c:
            r = c.delete("/images", params={"study_uid": study_a}, headers={"X-API-Key": key})
            assert r.json() == {"deleted": 30}
        # Without the key (the writes need it): one line, non-zero.
        bad = subprocess.run(cmd, env={**env, "CBMIR_API_KEY": "wrong"}, capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith("cbmir: error:")


def test_unreachable_archive_is_a_one_line_error(local_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    out = subprocess.run([CBMIR, "index", "--dicomweb", url, "--no-progress"],
                         env=server_env(**local_env), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()  # nothing loaded, nothing else said
    assert line.startswith(f"cbmir: error: archive {url} unreachable: ConnectError")
    assert not Path(local_env["CBMIR_DATA_DIR"]).exists()


class _Malformed(http.server.BaseHTTPRequestHandler):
    """/studies answers one study; its series listing is not JSON; /bad is a dict."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/ok/studies?"):
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}},
                               {"0020000D": {"vr": "UI"}}][:1]).encode()
        elif self.path.startswith("/ok/studies/1.2.3/series"):
            body = b"<html>not json</html>"
        elif self.path.startswith("/bad/studies"):
            body = b'{"not": "a list"}'
        else:
            body = b"[{}]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_malformed_qido_answers_are_handled(
    local_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Malformed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, counts, err = _run(monkeypatch, capsys, local_env, "index", "--dicomweb",
                                 f"{base}/ok", "--no-progress")
        assert code == 0 and counts["listing_errors"] == 1 and counts["instances"] == 0
        for root in ("bad", "none"):  # a dict; an entry without its UID
            code, _, err = _run(monkeypatch, capsys, local_env, "index", "--dicomweb",
                                f"{base}/{root}", "--no-progress")
            assert code == 2 and "Traceback" not in err
            assert err.strip().splitlines()[-1].startswith("cbmir: error: malformed QIDO-RS")
    finally:
        server.shutdown()


def test_none_fetches_the_original_from_the_archive(
    archive: Archive, make_settings: Callable[..., Settings],
    open_client: Callable[[Settings], TestClient],
) -> None:
    """CBMIR_STORE_ORIGINALS=none keeps the rendering; ?original=true asks the archive."""
    series_uid, (study_uid, slices) = next(iter(archive.series.items()))
    sop = pydicom.dcmread(io.BytesIO(slices[0])).SOPInstanceUID
    wado = f"{archive.orthanc.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{sop}"
    client = open_client(make_settings(store_originals="none",
                                       dicomweb_url=archive.orthanc.dicomweb))
    r = client.post("/index", files={"files": ("a.dcm", slices[0])}, data={"wado_url": [wado]})
    item_id = r.json()["items"][0]["id"]
    got = client.get(f"/images/{item_id}?original=true")
    assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(got.content)).SOPInstanceUID == sop
    # Not from an archive: nothing to fetch.
    r = client.post("/index", files={"files": ("b.dcm", slices[1])})
    assert client.get(f"/images/{r.json()['items'][0]['id']}?original=true").status_code == 404
    bad = client.post("/index", files={"files": ("c.dcm", slices[2])},
                      data={"wado_url": ["not a url"]})
    assert bad.status_code == 422 and "wado_url" in bad.json()["detail"]
