"""The archive figures of issue 12, from one run: import rate from a local Orthanc beside
the ``POST /index`` rate, follower latency from a STOW to searchable, C-STORE ingest rate.

    .venv/bin/python -m bench.pacs [--n 160] [--size 256] [--latency-runs 20]

One real ``cbmir serve`` (the default model, ``CBMIR_STORE_ORIGINALS=deidentified``), one
real Orthanc (Debian's packages, StableAge 1 s), synthetic 16-bit CT series of
``--size``² slices, each path with its own series. Results go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pydicom

from tests.dicomfiles import ct_series
from tests.orthanc import start_orthanc
from tests.serverproc import CBMIR, ServerProc, free_port, poll, server_env

KEY = "bench-key-0123456789"


def _count(c: httpx.Client, series: str) -> int:
    return int(c.get("/images", params={"series_uid": series}).json()["total"])


def post_index_rate(c: httpx.Client, files: list[bytes], batch: int = 16) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        part = files[s : s + batch]
        r = c.post("/index", files=[("files", (f"{i}.dcm", b)) for i, b in enumerate(part)],
                   headers={"X-API-Key": KEY})
        r.raise_for_status()
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=160)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--latency-runs", type=int, default=20)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cbmir-bench-pacs-"))
    orthanc = start_orthanc(root / "orthanc", stable_age_s=1)
    env = server_env(CBMIR_DATA_DIR=str(root / "srv"), CBMIR_API_KEY=KEY)
    out: dict[str, object] = {"n": a.n, "size": a.size}
    children: list[subprocess.Popen[bytes]] = []  # killed at the end, whatever happens

    def series(seed: int, n: int) -> tuple[str, str, list[bytes]]:
        from tests.dicomfiles import ct_slice

        study, uid, _ = ct_series(0, seed=seed)
        return study, uid, [ct_slice(study, uid, i + 1, seed=seed, size=a.size)
                            for i in range(n)]

    try:
        with ServerProc(env, root / "server.log").start() as server, \
                server.client(timeout=300) as c:
            _, _, direct = series(1, a.n)
            out["post_index_img_s"] = round(post_index_rate(c, direct), 1)

            study, uid, archived = series(2, a.n)
            orthanc.stow(archived)
            t0 = time.perf_counter()
            run = subprocess.run([CBMIR, "index", "--dicomweb", orthanc.dicomweb, "--to",
                                  server.url, "--study", study, "--no-progress"], env=env,
                                 capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            summary = json.loads(run.stdout)
            assert summary["added"] == a.n, summary
            out["dicomweb_import_img_s"] = summary["images_per_s"]
            out["dicomweb_import_img_s_with_start"] = round(a.n / wall, 1)

            state = root / "follow.json"
            follow = subprocess.Popen([CBMIR, "follow", "--orthanc", orthanc.url, "--to",
                                       server.url, "--state", str(state), "--poll-seconds",
                                       "0.1"], env=env, stdout=(root / "follow.log").open("wb"),
                                      stderr=subprocess.STDOUT)
            children.append(follow)
            poll(lambda: state.exists(), 60, "the follower to start")
            lat = []
            for i in range(a.latency_runs):
                _, s_uid, slices = series(100 + i, 4)
                t0 = time.perf_counter()
                orthanc.stow_rs(slices)
                poll(lambda s_uid=s_uid: _count(c, s_uid) == 4, 60, "followed series")
                lat.append(time.perf_counter() - t0)
            follow.send_signal(signal.SIGTERM)
            follow.wait(60)
            lat.sort()
            out["follow_latency_s"] = {
                "p50": round(statistics.median(lat), 2),
                "p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
                "runs": len(lat), "series_slices": 4, "orthanc_stable_age_s": 1}

            port = free_port()
            listen = subprocess.Popen([CBMIR, "listen", "--port", str(port), "--to",
                                       server.url, "--spool", str(root / "spool")], env=env,
                                      stdout=(root / "listen.log").open("wb"),
                                      stderr=subprocess.STDOUT)
            children.append(listen)
            from pynetdicom import AE
            from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

            _, s_uid, pushed = series(3, a.n)
            datasets = [pydicom.dcmread(io.BytesIO(b)) for b in pushed]
            ae = AE(ae_title="BENCH")
            ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])

            def associate() -> bool:
                assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
                up = bool(assoc.is_established)
                if up:
                    assoc.release()
                return up

            poll(associate, 60, "the SCP")
            assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
            t0 = time.perf_counter()
            for ds in datasets:
                assert assoc.send_c_store(ds).Status == 0
            sent = time.perf_counter() - t0
            assoc.release()
            poll(lambda: _count(c, s_uid) == a.n, 600, "pushed series")
            total = time.perf_counter() - t0
            listen.send_signal(signal.SIGTERM)
            listen.wait(60)
            out["c_store_accept_img_s"] = round(a.n / sent, 1)
            out["c_store_ingest_img_s"] = round(a.n / total, 1)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(30)
        orthanc.kill()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
