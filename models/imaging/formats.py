"""The formats cbmir reads, told apart by their bytes (magic numbers), never by a file name:
a client's name or content type is not evidence.

Also what every decoder returns (:class:`DecodedImage`) and which files of an image folder
are worth reading (:func:`is_image_file`, for data sets and bulk indexing alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
)
"""Lower-case suffixes worth reading when scanning a dataset folder (extension-less
files, common for DICOM, are sniffed by the caller with :func:`sniff_format`)."""

CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "dicom": "application/dicom",
}


@dataclass(frozen=True)
class DecodedImage:
    """A fully loaded 8-bit image ("L" or "RGB") and what was learnt while decoding it."""

    image: Image.Image
    format: str
    content_type: str
    metadata: dict[str, str | int | float | None]


# Two-letter DICOM value representations: an explicit-VR element header carries one at
# bytes 4-5, which tells a preamble-less DICOM stream from random bytes.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
# BITMAPINFOHEADER sizes (core, v1..v5 and the two Adobe variants): "BM" alone is too
# weak a magic (any text starting with "BM" has it).
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble and "DICM" (old ACR-NEMA style files).

    Accepted only when the first element is in group 0x0002 (file meta) or 0x0008
    (identification, the first group of any image dataset) and its header is plausible:
    either an explicit VR, or an implicit-VR 32-bit length that fits in the data.
    """
    if len(data) < 12:
        return False
    le_group = int.from_bytes(data[0:2], "little")
    be_group = int.from_bytes(data[0:2], "big")
    if le_group in (0x0002, 0x0008):
        if data[4:6] in _DICOM_VRS:
            return True
        return le_group == 0x0008 and int.from_bytes(data[4:8], "little") <= len(data) - 8
    # Big endian exists only as explicit VR (and group 0x0002 is always little endian).
    return be_group == 0x0008 and data[4:6] in _DICOM_VRS


def sniff_format(data: bytes) -> str | None:
    """The format of ``data`` from its magic numbers, or ``None`` if it is none we read.

    Returns one of ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"``, ``"dicom"``.
    """
    # DICOM first: its 128-byte preamble may legitimately hold a TIFF header
    # (PS3.10 7.5, "dual personality" files), which must still be read as DICOM.
    if data[128:132] == b"DICM":
        return "dicom"
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "tiff"
    if head.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    if _looks_like_bare_dicom(data):
        return "dicom"
    return None


def is_image_file(path: Path) -> bool:
    """Whether a file in an image folder should be read as an image: not hidden, and a
    supported extension or none at all with a recognised header (extension-less files
    are common for DICOM)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() in SUPPORTED_EXTENSIONS:
        return True
    if path.suffix:
        return False
    with path.open("rb") as f:
        return sniff_format(f.read(1024)) is not None
