"""The DICOMweb client's parsing and the follower's state file, on hand-made answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.service.dicomweb import ArchiveError, parse_multipart, tag_value, uid_of
from app.service.follow import FollowState


def test_multipart_parts_and_bare_dicom() -> None:
    body = (b"preamble\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nONE\r\n"
            b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nTWO\r\n--XyZ--\r\n")
    ct = 'multipart/related; type="application/dicom"; boundary="XyZ"'
    assert parse_multipart(body, ct) == [b"ONE", b"TWO"]
    assert parse_multipart(b"DICM", "application/dicom") == [b"DICM"]
    with pytest.raises(ArchiveError, match="not multipart"):
        parse_multipart(b"<html>", "text/html")


def test_qido_values_and_uids() -> None:
    entry = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080060": {"vr": "CS"}}
    assert tag_value(entry, "0020000D") == "1.2.3"
    assert tag_value(entry, "00080060") is None and tag_value("junk", "0020000D") is None
    assert uid_of(entry, "0020000D", "study") == "1.2.3"
    for bad in ({}, {"0020000D": {"Value": ["1.2.x"]}}, {"0020000D": {"Value": [{"a": 1}]}}):
        with pytest.raises(ArchiveError, match="malformed QIDO-RS answer: a study"):
            uid_of(bad, "0020000D", "study")


def test_follow_state_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    assert FollowState.load(path, "http://a").last == 0
    FollowState("http://a", 41, {"1.2": "x"}).save(path)
    back = FollowState.load(path, "http://a")
    assert (back.last, back.studies) == (41, {"1.2": "x"})
    assert not list(path.parent.glob(".tmp-*"))
    with pytest.raises(ValueError, match="another archive"):
        FollowState.load(path, "http://b")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        FollowState.load(path, "http://a")
