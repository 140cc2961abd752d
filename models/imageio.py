"""Decode uploaded or stored image bytes into a PIL image: the one place that decides formats.

Training (dataset files), evaluation and the REST service (uploads) all go through
:func:`decode_image`, so an image the service accepts is decoded exactly as the model
saw it in training. The format is decided from the bytes (magic numbers), never from a
file name: a client's name or content type is not evidence.

Every failure is an :class:`ImageDecodeError` subclass whose ``str()`` is a one-line
reason safe to show a client (no raw bytes, no patient data) and whose ``status_code``
is the HTTP answer the REST layer gives. Exceptions of Pillow, pydicom and numpy never
leak out of this module.

DICOM decoding lives in :mod:`models.dicom` (imported on first use: pydicom is only
needed when a DICOM file is actually seen).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width*height decoded; well above any CT/MR/CR/mammogram, below a bomb."""

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

_NOT_SUPPORTED = "not a supported image (PNG, JPEG, TIFF, BMP or DICOM)"


class ImageDecodeError(ValueError):
    """Base of every decode failure; ``str(e)`` is one line, safe to show a client."""

    status_code: int = 422


class UnsupportedFormatError(ImageDecodeError):
    """Not an image this service reads (text, HTML, ZIP, PDF, GIF, empty, ...)."""

    status_code = 415


class UnsupportedTransferSyntaxError(UnsupportedFormatError):
    """A DICOM file whose (compressed) transfer syntax no installed decoder handles."""

    status_code = 415


class CorruptImageError(ImageDecodeError):
    """A known format that is truncated or broken, or a DICOM file without pixel data."""

    status_code = 422


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed: refused before the pixels are decoded."""

    status_code = 413


@dataclass(frozen=True)
class DecodedImage:
    """A fully loaded 8-bit image ("L" or "RGB") and what was learnt while decoding it."""

    image: Image.Image
    format: str
    content_type: str
    metadata: dict[str, str | int | float]


# --- sniffing ---------------------------------------------------------------------------

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


# --- raster formats (Pillow) ------------------------------------------------------------

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_EXIF_ORIENTATION = 0x0112


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


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image is too large: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
    )


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max of the image itself to 0..255 (a constant image gives 0); NaN/inf give 0.

    For 16/32-bit and float rasters, which carry no display window of their own.
    """
    values = arr.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not all_finite:
        if not finite.any():
            return np.zeros(arr.shape, dtype=np.uint8)
        values = np.where(finite, values, np.nan)
    lo = float(np.nanmin(values))
    hi = float(np.nanmax(values))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (values - lo) * (255.0 / (hi - lo))
    if not all_finite:
        out = np.nan_to_num(out, nan=0.0)
    return np.rint(out).astype(np.uint8)


def _over_black(image: Image.Image, color_mode: str) -> Image.Image:
    """Composite an image with alpha over black: medical images have black backgrounds,
    so transparent areas become background rather than whatever colour they hid."""
    alpha = image.getchannel("A")
    out = Image.new(color_mode, image.size, 0)
    out.paste(image.convert(color_mode), (0, 0), alpha)
    return out


def _palette_is_gray(image: Image.Image) -> bool:
    """True when every palette entry the image uses is a gray (r == g == b)."""
    palette = image.getpalette("RGB") or []
    colors = image.getcolors(256) or []
    for _count, index in colors:
        start = 3 * cast(int, index)  # a palette index for mode P
        rgb = palette[start : start + 3]
        if len(rgb) == 3 and not rgb[0] == rgb[1] == rgb[2]:
            return False
    return True


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any Pillow mode → "L" (single-channel sources) or "RGB" (colour sources)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        gray = _palette_is_gray(image)
        if mode == "PA" or image.has_transparency_data:
            return _over_black(image.convert("LA" if gray else "RGBA"), "L" if gray else "RGB")
        return image.convert("L" if gray else "RGB")
    if mode in ("LA", "La"):
        return _over_black(image.convert("LA"), "L")
    if mode in ("RGBA", "RGBa"):
        return _over_black(image.convert("RGBA"), "RGB")
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I;16N, I, F
        return Image.fromarray(_scale_to_uint8(np.asarray(image)))
    # CMYK, YCbCr, RGBX, LAB, HSV: Pillow knows their conversion to RGB.
    return image.convert("RGB")


def _decode_raster(data: bytes, fmt: str, max_pixels: int) -> DecodedImage:
    pil_format = _PIL_FORMATS[fmt]
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; turn the warning into
        # an exception so a bomb is always refused and never logged as a Python warning.
        # (catch_warnings is process-global; the worst a race can do is leave this one
        # filter installed or not, which only changes how a bomb is reported.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Image.open only parses the header: the size is known before any pixel is
            # decoded, so a tiny file claiming 50,000 x 50,000 is refused without allocating.
            image: Image.Image = Image.open(io.BytesIO(data), formats=[pil_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        log.info("refused %s: Pillow decompression-bomb check (%s)", fmt, type(exc).__name__)
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageTooLargeError(
            f"image is too large: exceeds the limit of {limit} pixels"
        ) from None
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        log.info("corrupt %s header: %s", fmt, type(exc).__name__)
        raise CorruptImageError(f"{pil_format} image is corrupt or truncated") from None

    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{pil_format} image has no pixels")
    source_mode = image.mode
    try:
        image.load()  # multi-page TIFF: the first page, the one Image.open selects
        if fmt in ("jpeg", "tiff") and image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            # Phone photos of films and scanned slides carry their rotation in EXIF.
            image = ImageOps.exif_transpose(image)
        image = _to_8bit(image)
    except MemoryError:
        raise _too_large(width, height, max_pixels) from None
    except Exception as exc:  # OSError ("image file is truncated"), zlib.error, ...
        log.info("corrupt %s pixel data: %s", fmt, type(exc).__name__)
        raise CorruptImageError(f"{pil_format} image is corrupt or truncated") from None
    return DecodedImage(
        image=image,
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        metadata={"width": width, "height": height, "mode": source_mode},
    )


# --- public entry points ----------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode PNG, JPEG, TIFF, BMP or DICOM bytes to an 8-bit "L" or "RGB" image.

    Raises an :class:`ImageDecodeError` subclass (and nothing else) on failure.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(_NOT_SUPPORTED)
    if fmt == "dicom":
        # Imported here: pydicom is only loaded by processes that meet a DICOM file.
        from models.dicom import decode_dicom

        return decode_dicom(data, max_pixels=max_pixels)
    return _decode_raster(data, fmt, max_pixels)


def read_image_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """:func:`decode_image` of a file's bytes (an unreadable file raises its ``OSError``)."""
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels)


def render_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (for ``GET /images/{id}``)."""
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
