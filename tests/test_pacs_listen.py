"""``cbmir listen``: a real C-STORE SCP process, pushed to by a pynetdicom SCU, ingesting
into a real ``cbmir serve``; C-ECHO; the accepted transfer syntaxes."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.dicomfiles import ct_series, jpeg_lossless
from tests.serverproc import CBMIR, ServerProc, free_port, poll, server_env

KEY = "listen-key-0123456789"


def _listening(port: int) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def test_c_store_is_searchable(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp_path / "srv"),
                     CBMIR_API_KEY=KEY, CBMIR_DICOMWEB_URL="https://pacs.example/dicom-web")
    port = free_port()
    study, series, slices = ct_series(20, seed=3)
    lossless = [jpeg_lossless(s) for s in slices[10:]]
    with ServerProc(env, tmp_path / "server.log").start() as server, server.client() as c:
        log = (tmp_path / "listen.log").open("ab")
        proc = subprocess.Popen([CBMIR, "listen", "--aet", "CBMIR", "--port", str(port),
                                 "--to", server.url, "--spool", str(tmp_path / "spool")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            poll(lambda: _listening(port), 30, "the SCP to answer C-ECHO")
            ae = AE(ae_title="TESTSCU")
            # Generous: on a loaded machine (the full suite beside other jobs) one answer
            # once took longer than pynetdicom's default 30 s.
            ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 180
            ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
            ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.4.70"])
            assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
            assert assoc.is_established
            for data in slices[:10] + lossless + [slices[0]]:  # the last: sent twice
                status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
                assert status.Status == 0
            assoc.release()
            poll(lambda: c.get("/images", params={"series_uid": series}).json()["total"] == 20,
                 60, "the pushed series to be searchable")
            poll(lambda: not list((tmp_path / "spool").glob("*.dcm")), 30, "an empty spool")
            hit = c.post("/search", files={"file": ("q.dcm", slices[12])},
                         params={"scope": "all", "k": 1}).json()["results"][0]
            sop = pydicom.dcmread(io.BytesIO(slices[12])).SOPInstanceUID
            assert hit["dicom"]["sop_uid"] == sop
            assert hit["wado_url"] == (f"https://pacs.example/dicom-web/studies/{study}/series/"
                                       f"{series}/instances/{sop}")
            assert c.get("/images").json()["total"] == 20
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            log.close()
    text = (tmp_path / "listen.log").read_text()
    assert code == 0 and "Traceback" not in text, text[-3000:]
    assert "1.2.840.10008.1.2.4.70" in text  # the accepted syntaxes are listed at start
    assert '"received": 21' in text and '"duplicates": 1' in text


def test_listen_lists_syntaxes_and_refuses_a_taken_port(tmp_path: Path) -> None:
    out = subprocess.run([CBMIR, "listen", "--list-syntaxes"], capture_output=True, text=True,
                         timeout=60, env=server_env())
    assert out.returncode == 0 and "1.2.840.10008.1.2.4.57" in out.stdout.split()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [CBMIR, "listen", "--port", str(port), "--to", "http://127.0.0.1:9",
             "--spool", str(tmp_path / "spool")],
            capture_output=True, text=True, timeout=60, env=server_env())
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("cbmir: error:")
