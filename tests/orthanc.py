"""A real Orthanc for tests: Debian's ``orthanc`` and ``orthanc-dicomweb`` packages.

:func:`start_orthanc` writes a JSON configuration into a temporary directory (storage and
index there, free loopback ports, no remote access, no authentication, the DICOMweb plugin
at ``/dicom-web/``), starts ``Orthanc`` on it, waits for ``/system`` to answer, and
returns a handle whose :meth:`Orthanc.kill` stops that process by its pid. ``make test``
installs the packages when it runs as root (``deps-test``); elsewhere the tests that need
them skip, naming the packages.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serverproc import free_port, poll

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PACKAGES = "Debian packages orthanc and orthanc-dicomweb"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


def require_orthanc() -> str:
    binary = orthanc_binary()
    if binary is None or not PLUGIN.is_file():
        pytest.skip(f"needs a real Orthanc: install the {PACKAGES} (make deps-test, as root)")
    return binary


@dataclass
class Orthanc:
    proc: subprocess.Popen[bytes]
    url: str
    dicom_port: int
    aet: str
    log_path: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stow(self, files: list[bytes]) -> None:
        """Store instances through Orthanc's REST API (POST /instances, one per file)."""
        with self.client() as c:
            for data in files:
                r = c.post("/instances", content=data)
                assert r.status_code == 200, r.text

    def stow_rs(self, files: list[bytes]) -> None:
        """Store instances through STOW-RS (multipart/related, one request)."""
        boundary = "cbmir-test-boundary"
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                        + f + b"\r\n" for f in files) + b"--" + boundary.encode() + b"--\r\n"
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        with self.client() as c:
            r = c.post("/dicom-web/studies", content=body, headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def start_orthanc(root: Path, *, stable_age_s: int = 1, aet: str = "ORTHANC") -> Orthanc:
    binary = require_orthanc()
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "cbmir-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": stable_age_s,
        "HttpTimeout": 10,
        "SaveJobs": False,
    }
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log_path = root / "orthanc.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, str(config_path)], stdout=log,
                                stderr=subprocess.STDOUT)
    orthanc = Orthanc(proc, f"http://127.0.0.1:{http_port}", dicom_port, aet, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {proc.returncode}:\n{orthanc.log()[-3000:]}")
        try:
            return httpx.get(f"{orthanc.url}/system", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(ready, 30, "Orthanc's /system to answer")
    except BaseException:
        orthanc.kill()
        raise
    return orthanc
