"""``cbmir follow --orthanc`` against a real Orthanc and a real ``cbmir serve``: a new
series becomes searchable, a SIGKILL and restart store nothing twice, a study deleted in
Orthanc is dropped."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx

from tests.dicomfiles import ct_series
from tests.orthanc import start_orthanc
from tests.serverproc import CBMIR, ServerProc, free_port, poll, server_env

KEY = "follow-key-0123456789"


def _total(c: httpx.Client, **params: str) -> int:
    return int(c.get("/images", params=params).json()["total"])


def test_follow_new_series_restart_and_deletion(tiny_model: Path, tmp_path: Path) -> None:
    orthanc = start_orthanc(tmp_path / "orthanc", stable_age_s=1)
    env = server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp_path / "srv"),
                     CBMIR_API_KEY=KEY)
    state = tmp_path / "follow.json"
    log = (tmp_path / "follow.log").open("ab")

    def follower() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [CBMIR, "follow", "--orthanc", orthanc.url, "--to", server.url, "--state",
             str(state), "--poll-seconds", "0.2", "--reconcile-seconds", "0.5"],
            env=env, stdout=log, stderr=subprocess.STDOUT)

    try:
        with ServerProc(env, tmp_path / "server.log").start() as server, server.client() as c:
            proc = follower()
            study_a, series_a, slices_a = ct_series(20, seed=1)
            orthanc.stow_rs(slices_a)
            poll(lambda: _total(c, series_uid=series_a) == 20, 60, "series A searchable")
            hit = c.post("/search", files={"file": ("q.dcm", slices_a[0])},
                         params={"scope": "all", "k": 1}).json()["results"][0]
            assert hit["dicom"]["series_uid"] == series_a
            assert hit["wado_url"].startswith(f"{orthanc.url}/dicom-web/studies/{study_a}/")

            # Killed, then more arrives, then restarted: each instance once.
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            study_b, series_b, slices_b = ct_series(8, seed=2)
            orthanc.stow(slices_b)
            cursor = json.loads(state.read_text())["last"]
            proc = follower()
            poll(lambda: _total(c, series_uid=series_b) == 8, 60, "series B searchable")
            assert _total(c) == 28 and _total(c, series_uid=series_a) == 20
            poll(lambda: json.loads(state.read_text())["last"] > cursor, 30, "cursor moved")

            # Deleted in Orthanc: dropped at the next reconcile.
            [found] = httpx.post(f"{orthanc.url}/tools/lookup", content=study_a).json()
            assert httpx.delete(f"{orthanc.url}{found['Path']}").status_code == 200
            poll(lambda: _total(c, study_uid=study_a) == 0, 60, "study A dropped")
            assert _total(c) == 8
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        log.close()
        orthanc.kill()
    text = (tmp_path / "follow.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_follow_unreachable_orthanc_is_a_one_line_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([CBMIR, "follow", "--orthanc", url, "--to", "http://127.0.0.1:9",
                          "--state", str(tmp_path / "s.json")], env=server_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"cbmir: error: Orthanc {url} unreachable")
