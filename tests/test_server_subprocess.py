"""A real ``cbmir serve`` process: start, index, search, refuse a second writer, SIGTERM."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import demo_files
from serverproc import CBMIR, ServerProc, free_port, server_env

from app.cli import main


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path) -> Iterator[ServerProc]:
    env = server_env(CBMIR_MODEL_DIR=str(tiny_model), CBMIR_DATA_DIR=str(tmp_path / "data"))
    with ServerProc(env, tmp_path / "server.log") as srv:
        yield srv.start()


def test_serve_index_search_then_sigterm(server: ServerProc) -> None:
    url, env = server.url, server.env
    paths = demo_files(per_class=1)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = httpx.post(f"{url}/index", files=files, data={"label": [p.parent.name for p in paths]},
                   timeout=30)
    assert r.status_code == 200, r.text
    first = r.json()["items"][0]
    r = httpx.post(f"{url}/search", files={"file": ("q.jpeg", paths[0].read_bytes())},
                   params={"scope": "all", "k": 3}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["id"] == first["id"]

    # A second process on the same data directory is refused with one line.
    second = subprocess.run([CBMIR, "serve", "--port", str(free_port())], env=env, text=True,
                            capture_output=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("cbmir:")]
    assert line.startswith("cbmir: error: data directory") and "in use" in line

    assert server.terminate() == 0, server.log()
    out = server.log()
    assert "index snapshot saved (6 vectors)" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(("env", "message"), [
    ({"CBMIR_MODEL_DIR": "/nonexistent/model"}, "CBMIR_MODEL_DIR /nonexistent/model"),
    ({"CBMIR_MAX_UPLOAD_MB": "0"}, "invalid CBMIR_MAX_UPLOAD_MB"),
    ({"CBMIR_DEVICE": "tpu"}, "invalid CBMIR_DEVICE"),
])
def test_bad_settings_exit_2_with_one_line(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tiny_model: Path,
) -> None:
    monkeypatch.setenv("CBMIR_MODEL_DIR", str(tiny_model))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbmir: error: ") and message in err and err.count("\n") == 1


def test_bad_model_dir_as_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run([CBMIR, "serve"], env=server_env(CBMIR_MODEL_DIR=str(tmp_path)),
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"cbmir: error: CBMIR_MODEL_DIR {tmp_path} has no config.json\n"
