"""``cbmir index``: bulk-adding a folder through the service's ingest path."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import demo_files, png_bytes, wait_ready
from fastapi.testclient import TestClient

from app.cli import main
from app.config import Settings
from app.main import create_app
from app.service.bulk import index_folder


def _folder(root: Path) -> Path:
    for p in demo_files(per_class=2):
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / p.parent.name / p.name)
    (root / "Unsorted").mkdir()
    (root / "Unsorted" / "x.png").write_bytes(png_bytes(1))
    (root / "loose.png").write_bytes(png_bytes(2))
    (root / "CXR" / "broken.png").write_bytes(b"not an image at all")
    (root / "CXR" / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_index_folder_labels_skips_and_duplicates(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "images")
    settings = make_settings()
    summary = index_folder(folder, settings, progress=False)
    assert summary == {"added": 14, "duplicates": 0, "skipped": 2, "index_size": 14}
    again = index_folder(folder, settings, progress=False)
    assert again == {"added": 0, "duplicates": 14, "skipped": 2, "index_size": 14}

    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/search", files={"file": ("q", png_bytes(1))}, params={"scope": "all"})
        top = r.json()["results"][0]
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        r = c.post("/search", files={"file": ("q", demo_files(1)[4].read_bytes())},
                   params={"label": "Hand", "k": 100})
        assert len(r.json()["results"]) == 2


def test_cli_index_prints_a_json_summary(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CBMIR_MODEL_DIR", str(tiny_model))
    monkeypatch.setenv("CBMIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CBMIR_DEVICE", "cpu")
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    assert main(["index", str(folder), "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"added": 3, "duplicates": 0, "skipped": 0, "index_size": 3}
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
