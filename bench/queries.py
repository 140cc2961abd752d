"""Realistic /search queries beside the 64x64 JPEG: a 512x512 16-bit CT DICOM, a
2,000x2,500 CR-sized PNG and a 4,000x5,000 mammogram-sized 16-bit PNG; and the
6,000x6,000 16-bit PNG of the memory check. Made deterministically (seeded), smooth like
radiographs (no noise: within the 20 MB upload limit, like a real one compresses)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def _radiograph(width: int, height: int, seed: int, bits: int) -> np.ndarray:
    """``seed`` varies the texture, so each kind is its own image."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top = 2**bits - 1
    body = np.exp(-(((x - width / 2) / (0.35 * width)) ** 2 + ((y - height / 2) /
                                                               (0.4 * height)) ** 2))
    ribs = 0.15 * np.sin(y / (height / 18)) * body
    arr = top * (0.1 + 0.7 * body + ribs)
    arr *= 1 + 0.02 * np.sin(x / (7 + seed)) * np.cos(y / 11)  # fine texture
    return np.clip(np.round(arr / 16) * 16, 0, top).astype(np.uint16 if bits > 8 else np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def ct_dicom() -> tuple[bytes, str]:
    """pydicom-data's 512x512 CT (693_UNCI.dcm) when installed, else pydicom's 128 px
    CT_small with its pixels enlarged to 512x512 (same header and rescale)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file("693_UNCI.dcm")
    except Exception:  # pydicom-data absent: pydicom would try to download it
        path = None
    if path:
        return Path(path).read_bytes(), "693_UNCI.dcm (pydicom-data), 512x512 16-bit CT"
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = np.kron(ds.pixel_array, np.ones((4, 4), ds.pixel_array.dtype)).tobytes()
    ds.Rows = ds.Columns = 512
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue(), "CT_small.dcm enlarged to 512x512 16-bit CT"


def query_kinds(jpeg: bytes) -> dict[str, tuple[bytes, str]]:
    ct, ct_what = ct_dicom()
    return {
        "jpeg64": (jpeg, "64x64 JPEG (MedNIST)"),
        "ct512": (ct, ct_what),
        "cr2000x2500": (_png(_radiograph(2000, 2500, 1, 12)), "2000x2500 12-bit CR, 16-bit PNG"),
        "mammo4000x5000": (_png(_radiograph(4000, 5000, 2, 14)),
                           "4000x5000 14-bit mammogram, 16-bit PNG"),
    }


def memory_image() -> bytes:
    return _png(_radiograph(6000, 6000, 3, 16))
