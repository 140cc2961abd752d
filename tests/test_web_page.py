"""The page at ``/`` and its files: served by the app, self-contained (nothing from another
origin: the service runs air-gapped), packaged, and open like ``/docs``."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "app" / "web"
SVG_NS = "http://www.w3.org/2000/svg"


def test_the_page_and_every_file_it_names_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert client.head("/").status_code == 200
    named = set(re.findall(r'(?:src|href)="(/web/[^"]+)"', r.text))
    assert {"/web/app.css", "/web/js/main.js", "/web/icon.svg"} <= named
    for path in sorted(named | {f"/web/{p.relative_to(WEB)}" for p in WEB.rglob("*.js")}):
        got = client.get(path)
        assert got.status_code == 200, path
        if path.endswith(".js"):
            assert "javascript" in got.headers["content-type"], path
    assert client.get("/web/../app/config.py").status_code == 404
    assert client.get("/web/nothing.js").status_code == 404


def test_nothing_comes_from_another_origin() -> None:
    for path in sorted(WEB.rglob("*")):
        if path.is_file():
            text = path.read_text().replace(SVG_NS, "")
            assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path
    for path in sorted(WEB.rglob("*.js")):
        for target in re.findall(r'^import .* from "([^"]+)";', path.read_text(), re.M):
            assert target.startswith("./") and (path.parent / target).is_file(), (path, target)


def test_the_page_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "web/**/*" in pyproject["tool"]["setuptools"]["package-data"]["app"]


def test_the_page_is_open_and_not_an_api_operation(
    make_settings: Callable[..., Settings], open_client: Callable[[Settings], TestClient],
) -> None:
    c = open_client(make_settings(api_key="k", api_key_for_reads=True))
    assert c.get("/").status_code == 200  # like /docs: no data in it
    assert c.get("/web/js/api.js").status_code == 200
    assert c.get("/images").status_code == 401
    paths = c.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)
