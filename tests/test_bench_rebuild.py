"""Smoke test of ``python -m bench.rebuild`` on a small store: a real ``cbmir serve``
builds its flat sub-index into IVF inside one ``POST /index`` while searches and
``/health`` go on, and the report lands between its markers (once, however often run)."""

from __future__ import annotations

from pathlib import Path

from bench.rebuild import BEGIN, END, render, run, splice


def test_rebuild_under_load_is_measured_and_spliced(tiny_model: Path, tmp_path: Path) -> None:
    res = run(4_000, tiny_model, tmp_path / "work")
    assert res["index_status"] == 200 and res["rebuild_logged"]
    assert res["search"]["errors"] == 0 and res["health"]["errors"] == 0
    assert res["search"]["requests"] >= 1 and res["health"]["requests"] >= 1
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n\nkept\n")
    for _ in range(2):
        splice(out, render(res))
    text = out.read_text()
    assert text.count(BEGIN) == text.count(END) == 1 and "kept" in text
    assert "4,000 stored vectors" in text
