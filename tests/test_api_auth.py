"""API key: writes need it when set; reads too with CBMIR_API_KEY_FOR_READS."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from conftest import png_bytes, upload
from fastapi.testclient import TestClient

from app.config import Settings

KEY = "s3cret-key"


def test_writes_need_the_key(make_settings: Callable[..., Settings],
                             open_client: Callable[[Settings], TestClient],
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    c = open_client(make_settings(api_key=KEY))
    files = [upload("a.png", png_bytes(1))]
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        r = c.post("/index", files=files, headers=headers)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = c.post("/index", files=files, headers={"X-API-Key": KEY})
    assert r.status_code == 200
    item_id = r.json()["items"][0]["id"]
    # Reads stay open.
    assert c.post("/search", files={"file": ("q.png", png_bytes(1))}).status_code == 200
    assert c.get(f"/images/{item_id}").status_code == 200
    assert c.delete(f"/images/{item_id}").status_code == 401
    assert c.delete(f"/images/{item_id}", headers={"X-API-Key": "nope"}).status_code == 401
    assert c.delete(f"/images/{item_id}", headers={"X-API-Key": KEY}).status_code == 204
    assert KEY not in caplog.text


def test_reads_need_the_key_when_configured(make_settings: Callable[..., Settings],
                                            open_client: Callable[[Settings], TestClient]) -> None:
    c = open_client(make_settings(api_key=KEY, api_key_for_reads=True))
    auth = {"X-API-Key": KEY}
    r = c.post("/index", files=[upload("a.png", png_bytes(1))], headers=auth)
    item_id = r.json()["items"][0]["id"]
    query = {"file": ("q.png", png_bytes(1))}
    assert c.post("/search", files=query).status_code == 401
    assert c.get(f"/images/{item_id}").status_code == 401
    assert c.get(f"/images/{item_id}", headers={"X-API-Key": "x"}).status_code == 401
    assert c.post("/search", files=query, headers=auth).status_code == 200
    assert c.get(f"/images/{item_id}", headers=auth).status_code == 200
    assert c.get("/health").status_code == 200
    assert c.get("/metrics").status_code == 200


def test_blank_key_means_no_auth(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(api_key="").api_key is None
    assert make_settings(api_key="  ").api_key is None
