"""Hostile-input catalogue: every case is refused with its exact status and one-line
``detail``, the server stays healthy and nothing is written (row count and original files
counted before and after). Images that only look unusual (16-bit, RGBA, palette, CMYK, a
multi-frame DICOM volume) are accepted and decoded correctly, not refused.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import CLASSES, index_bytes, png_bytes, wait_ready
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from app.api.routes.ingest import MAX_METADATA_DEPTH
from app.config import Settings
from app.main import create_app
from app.service.store import ORIGINALS

MAX_FILES = 3
NOT_IMAGE = "not a supported image (PNG, JPEG, TIFF, BMP or DICOM)"
TOO_BIG = "request body is larger than the 1 MB limit (CBMIR_MAX_UPLOAD_MB)"
KNOWN = ", ".join(CLASSES)
NOT_INT = "Input should be a valid integer, unable to parse string as an integer"
MAX_ID = 2**63 - 1


# --- hostile bytes ------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A well-formed PNG of a few dozen bytes whose header claims width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not an image")
    return buf.getvalue()


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is bundled with pydicom"
    return Path(str(path)).read_bytes()


def _mpeg2_dicom() -> bytes:
    """A DICOM file labelled MPEG-2 video: a transfer syntax nothing here decodes."""
    ds = pydicom.dcmread(io.BytesIO(_testdata("MR_small.dcm")))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(filename: bytes, body: bytes) -> bytes:
    """A hand-built multipart body (to send a file name that is not UTF-8)."""
    return (b'--zz\r\nContent-Disposition: form-data; name="files"; filename="' + filename
            + b'"\r\nContent-Type: image/png\r\n\r\n' + body + b"\r\n--zz--\r\n")


def _nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


RNG = np.random.default_rng(20240611)
JPEG = _encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
PNG = png_bytes(7)
GOOD = png_bytes(8)
MULTIPART = {"content-type": "multipart/form-data; boundary=zz"}


# --- the catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    id: str
    method: str
    path: str
    status: int
    detail: str
    request: Callable[[], dict[str, Any]] = dict

    def __str__(self) -> str:
        return self.id


def up(
    *named: tuple[str, bytes], field: str = "files", **form: Any
) -> Callable[[], dict[str, Any]]:
    """Request kwargs: files under ``field`` plus form fields."""
    return lambda: {"files": [(field, (n, b, "application/octet-stream")) for n, b in named],
                    "data": form}


def raw(content: bytes, headers: dict[str, str] | None = None,
        **params: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"content": content, "headers": headers or MULTIPART, "params": params}


def query(name: str = "q.png", data: bytes = PNG, **params: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"files": {"file": (name, data)}, "params": params}


def f1(name: str, msg: str) -> str:
    return f"file 1 ({name!r}): {msg}"


INDEX = [
    Hostile("no-body", "POST", "/index", 422, "files: Field required"),
    Hostile("empty-multipart", "POST", "/index", 422, "files: Field required", raw(b"--zz--\r\n")),
    Hostile("json-body", "POST", "/index", 422, "files: Field required",
            lambda: {"json": {"files": ["x"]}}),
    Hostile("zero-byte-file", "POST", "/index", 422, f1("e.png", "empty file"), up(("e.png", b""))),
    Hostile("text-as-png", "POST", "/index", 415, f1("notes.png", NOT_IMAGE),
            up(("notes.png", b"patient notes, not pixels\n"))),
    Hostile("html-as-png", "POST", "/index", 415, f1("x.png", NOT_IMAGE),
            up(("x.png", b"<!DOCTYPE html><html><script>alert(1)</script></html>"))),
    Hostile("zip-as-png", "POST", "/index", 415, f1("a.png", NOT_IMAGE), up(("a.png", _zip()))),
    Hostile("truncated-jpeg", "POST", "/index", 422,
            f1("cut.jpg", "JPEG image is corrupt or truncated"),
            up(("cut.jpg", JPEG[: len(JPEG) // 2]))),
    Hostile("truncated-png", "POST", "/index", 422,
            f1("cut.png", "PNG image is corrupt or truncated"),
            up(("cut.png", PNG[: len(PNG) // 2]))),
    Hostile("png-bomb-50000x50000", "POST", "/index", 413,
            f1("bomb.png", "image is too large: exceeds the limit of 40000000 pixels"),
            up(("bomb.png", _png_bomb()))),
    Hostile("over-max-upload", "POST", "/index", 413, TOO_BIG,
            up(("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (1 << 20)))),
    Hostile("over-max-upload-chunked", "POST", "/index", 413, TOO_BIG,
            lambda: {"content": iter([b"x" * 65536] * 24), "headers": MULTIPART}),
    Hostile("more-files-than-max", "POST", "/index", 413,
            f"{MAX_FILES + 1} files in one request; the limit is {MAX_FILES}",
            up(*[(f"{i}.png", png_bytes(100 + i)) for i in range(MAX_FILES + 1)])),
    Hostile("wrong-field-name", "POST", "/index", 422, "files: Field required",
            up(("a.png", PNG), field="image")),
    Hostile("too-many-form-fields", "POST", "/index", 400,
            "Too many fields. Maximum number of fields is 1000.",
            up(("a.png", PNG), label=["CXR"] * 1001)),
    Hostile("label-count-mismatch", "POST", "/index", 422,
            "got 2 label fields for 1 files: send one per file",
            up(("a.png", PNG), label=["CXR", "Hand"])),
    Hostile("unknown-label", "POST", "/index", 422,
            f1("a.png", f"unknown label 'Liver'; known: {KNOWN}"),
            up(("a.png", PNG), label="Liver")),
    Hostile("metadata-malformed", "POST", "/index", 422, "metadata field 1 is not valid JSON",
            up(("a.png", PNG), metadata="{bad")),
    Hostile("metadata-array", "POST", "/index", 422, "metadata field 1 must be a JSON object",
            up(("a.png", PNG), metadata="[1, 2]")),
    Hostile("metadata-number", "POST", "/index", 422, "metadata field 1 must be a JSON object",
            up(("a.png", PNG), metadata="42")),
    Hostile("metadata-nan", "POST", "/index", 422, "metadata field 1 is not valid JSON",
            up(("a.png", PNG), metadata='{"x": NaN}')),
    Hostile("metadata-1e999", "POST", "/index", 422, "metadata field 1 is not valid JSON",
            up(("a.png", PNG), metadata='{"x": 1e999}')),
    Hostile("metadata-recursion-bomb", "POST", "/index", 422, "metadata field 1 is not valid JSON",
            up(("a.png", PNG), metadata="[" * 100_000)),
    Hostile("metadata-too-deep", "POST", "/index", 422,
            f"metadata field 1 is nested deeper than {MAX_METADATA_DEPTH} levels",
            up(("a.png", PNG), metadata=_nested(MAX_METADATA_DEPTH + 1))),
    Hostile("metadata-lone-surrogate", "POST", "/index", 422,
            "metadata field 1 holds text that is not valid Unicode",
            up(("a.png", PNG), metadata='{"note": "\\ud800"}')),
    Hostile("non-utf8-file-name", "POST", "/index", 415, f1("\xff\xfebad.png", NOT_IMAGE),
            raw(_multipart(b"\xff\xfe\x80bad.png", b"not an image"))),
    Hostile("file-name-10k-chars", "POST", "/index", 400, "Invalid multipart data.",
            up(("n" * 10_000 + ".png", PNG))),
    Hostile("dicom-without-pixel-data", "POST", "/index", 422,
            f1("rtplan.dcm", "DICOM file has no pixel data"),
            up(("rtplan.dcm", _testdata("rtplan.dcm")))),
    Hostile("dicom-truncated", "POST", "/index", 422,
            f1("mr.dcm", "DICOM pixel data is corrupt or truncated"),
            up(("mr.dcm", _testdata("MR_truncated.dcm")))),
    Hostile("dicom-unsupported-transfer-syntax", "POST", "/index", 415,
            f1("video.dcm", f"DICOM transfer syntax {MPEG2MPML.name} ({MPEG2MPML}) cannot be "
                            "decoded here"), up(("video.dcm", _mpeg2_dicom()))),
    # All or nothing: the good first file is not stored when the second is refused.
    Hostile("good-then-bad-file", "POST", "/index", 415, f"file 2 ('bad.png'): {NOT_IMAGE}",
            up(("good.png", GOOD), ("bad.png", b"junk"))),
    Hostile("good-then-bad-label", "POST", "/index", 422,
            f"file 2 ('b.png'): unknown label 'Liver'; known: {KNOWN}",
            up(("a.png", GOOD), ("b.png", png_bytes(9)), label=["CXR", "Liver"])),
]

SEARCH = [
    Hostile("search-no-body", "POST", "/search", 422, "file: Field required"),
    Hostile("search-zero-byte", "POST", "/search", 422, "file: empty file", query(data=b"")),
    Hostile("search-wrong-field", "POST", "/search", 422, "file: Field required",
            up(("q.png", PNG), field="files")),
    Hostile("search-text", "POST", "/search", 415, f"file: {NOT_IMAGE}", query(data=b"hello")),
    Hostile("search-png-bomb", "POST", "/search", 413,
            "file: image is too large: exceeds the limit of 40000000 pixels",
            query(data=_png_bomb())),
    Hostile("search-over-max-upload", "POST", "/search", 413, TOO_BIG,
            query(data=b"\xff\xd8\xff" + b"\0" * (1 << 20))),
    *[Hostile(f"k={k}", "POST", "/search", 422, f"query.k: {msg}", query(k=k)) for k, msg in [
        ("0", "Input should be greater than or equal to 1"),
        ("-1", "Input should be greater than or equal to 1"),
        ("1000000000", "Input should be less than or equal to 1000"),
        ("ten", NOT_INT),
    ]],
    Hostile("unknown-scope", "POST", "/search", 422,
            "query.scope: Input should be 'predicted' or 'all'", query(scope="everything")),
    Hostile("unknown-label-query", "POST", "/search", 422,
            f"unknown label 'Liver'; known: {KNOWN}", query(label="Liver")),
]

_ID_CASES: list[tuple[str, int, str]] = [
    ("/images/../x", 404, "Not Found"),  # the client resolves the dots: /x
    ("/images/%2e%2e%2fetc", 404, "Not Found"),
    ("/images/..%2f..%2fetc%2fpasswd", 404, "Not Found"),
    ("/images/1%2f..%2f2", 404, "Not Found"),
    ("/images/-1", 422, "path.item_id: Input should be greater than or equal to 1"),
    ("/images/0", 422, "path.item_id: Input should be greater than or equal to 1"),
    ("/images/99999999999999999999999", 422,
     f"path.item_id: Input should be less than or equal to {MAX_ID}"),
    (f"/images/{MAX_ID}", 404, f"no image with id {MAX_ID}"),
    ("/images/1e3", 422, f"path.item_id: {NOT_INT}"),
    ("/images/%00", 422, f"path.item_id: {NOT_INT}"),
    ("/images/%3Cscript%3E", 422, f"path.item_id: {NOT_INT}"),
]
IMAGES = [
    Hostile(f"{m} {p}", m, p, status, detail)
    for p, status, detail in _ID_CASES for m in ("GET", "DELETE")
]

CATALOGUE = INDEX + SEARCH + IMAGES


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the whole catalogue (every case must leave it unchanged anyway)."""
    settings = Settings(
        model_dir=tiny_model, data_dir=tmp_path_factory.mktemp("hostile") / "data",
        device="cpu", seed_demo=False, snapshot_seconds=3600, api_key=None,
        max_upload_mb=1, max_files=MAX_FILES,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        index_bytes(c, [png_bytes(1), png_bytes(2)])  # a store with something to lose
        yield c


def _state(c: TestClient) -> tuple[int, int]:
    """(rows, original files): what a refused request must leave as it was."""
    r = c.get("/health")
    assert r.status_code == 200, r.text
    data_dir: Path = c.app.state.settings.data_dir  # type: ignore[attr-defined]
    files = [p for p in (data_dir / ORIGINALS).glob("*/*") if p.is_file()]
    return r.json()["index"]["size"], len(files)


@pytest.mark.parametrize("case", CATALOGUE, ids=str)
def test_hostile_input_is_refused_cleanly(hostile: TestClient, case: Hostile) -> None:
    before = _state(hostile)
    r = hostile.request(case.method, case.path, **case.request())
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert detail == case.detail
    assert "\n" not in detail and "Traceback" not in detail
    assert _state(hostile) == before


def test_the_catalogue_is_counted() -> None:
    ids = [c.id for c in CATALOGUE]
    assert len(ids) == len(set(ids))
    print(f"hostile input: {len(CATALOGUE)} cases refused cleanly, {len(ACCEPTED)} accepted")


# --- accepted, not refused: unusual but valid images ----------------------------------------


def _multiframe_dicom(frames: int = 5, size: int = 16) -> bytes:
    """A volume whose frame k has a bright column block at k (so the frame is visible)."""
    volume = np.zeros((frames, size, size), np.uint16)
    for k in range(frames):
        volume[k, :, 3 * k : 3 * k + 3] = 4000
    ds = Dataset()
    ds.PatientName = "Volume^Test"
    ds.Modality = "MR"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = size, size, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = volume.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _accepted() -> list[tuple[str, bytes, np.ndarray]]:
    """(case, bytes, the pixels GET /images/{id} must render)."""
    rng = np.random.default_rng(20240612)
    g16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 20 + 1000).astype(np.uint16)
    lo, hi = float(g16.min()), float(g16.max())
    g16_expected = np.rint((g16.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba_expected = np.rint(
        rgba[..., :3].astype(np.float64) * rgba[..., 3:4] / 255.0).astype(np.uint8)
    colour = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    palette = colour.quantize(32)
    cmyk = colour.convert("CMYK")
    cmyk_jpeg = _encode(cmyk, "JPEG")
    middle = np.zeros((16, 16), np.uint8)
    middle[:, 6:9] = 255  # frame 2 of 0..4
    return [
        ("png-16-bit", _encode(Image.fromarray(g16), "PNG"), g16_expected),
        ("png-rgba", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), rgba_expected),
        ("png-palette", _encode(palette, "PNG"), np.asarray(palette.convert("RGB"))),
        ("tiff-cmyk", _encode(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))),
        ("jpeg-cmyk", cmyk_jpeg, np.asarray(Image.open(io.BytesIO(cmyk_jpeg)).convert("RGB"))),
        ("dicom-multiframe-volume", _multiframe_dicom(), middle),
    ]


ACCEPTED = _accepted()


@pytest.mark.parametrize(("name", "data", "expected"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_unusual_but_valid_images_are_accepted_and_decoded(
    hostile: TestClient, name: str, data: bytes, expected: np.ndarray
) -> None:
    rows, files = _state(hostile)
    (item,) = index_bytes(hostile, [data], metadata=json.dumps({"case": name}))
    assert not item["duplicate"]
    assert _state(hostile) == (rows + 1, files + 1)
    r = hostile.get(f"/images/{item['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(r.content)))
    assert shown.shape == expected.shape
    # +-1: compositing over black rounds in Pillow's integer arithmetic.
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1, name
    r = hostile.post("/search", files={"file": ("q", data)}, params={"scope": "all", "k": 1})
    hit = r.json()["results"][0]
    assert hit["id"] == item["id"] and hit["metadata"]["case"] == name
    if name.startswith("dicom"):
        assert hit["metadata"]["frames"] == 5 and "PatientName" not in json.dumps(hit)
