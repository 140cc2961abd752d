"""Decode uploaded or stored image bytes into a PIL image: the one place that decides formats.

Training (dataset files), evaluation and the REST service (uploads) all go through
:func:`decode_image`, so an image the service accepts is decoded exactly as the model
saw it in training. The format is decided from the bytes (:func:`~models.imaging.formats.
sniff_format`), then the raster formats go to Pillow (:mod:`models.imaging.raster`) and
DICOM to pydicom (:mod:`models.imaging.dicom`, imported on first use: pydicom is only
needed when a DICOM file is actually seen).

Every failure is an :class:`~models.imaging.errors.ImageDecodeError` subclass.
"""

from __future__ import annotations

from pathlib import Path

from models.imaging.errors import UnsupportedFormatError
from models.imaging.formats import DecodedImage, sniff_format
from models.imaging.raster import open_raster
from models.imaging.scale import PendingDecode

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width*height decoded; well above any CT/MR/CR/mammogram, below a bomb."""

_NOT_SUPPORTED = "not a supported image (PNG, JPEG, TIFF, BMP or DICOM)"


def open_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, downscale_above: int | None = None
) -> PendingDecode:
    """Read the header of PNG, JPEG, TIFF, BMP or DICOM bytes: what decoding will cost
    (:attr:`~models.imaging.scale.PendingDecode.footprint`), before any pixel is decoded.

    ``downscale_above``: images with more pixels are reduced on read (see
    :mod:`models.imaging.scale`); None, the default, decodes every image at full size.
    Raises an :class:`~models.imaging.errors.ImageDecodeError` subclass (and nothing else).
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(_NOT_SUPPORTED)
    if fmt == "dicom":
        # Imported here: pydicom is only loaded by processes that meet a DICOM file.
        from models.imaging.dicom import open_dicom

        return open_dicom(data, max_pixels=max_pixels, downscale_above=downscale_above)
    return open_raster(data, fmt, max_pixels, downscale_above)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, downscale_above: int | None = None
) -> DecodedImage:
    """Decode PNG, JPEG, TIFF, BMP or DICOM bytes to an 8-bit "L" or "RGB" image.

    Raises an :class:`~models.imaging.errors.ImageDecodeError` subclass (and nothing else)
    on failure.
    """
    return open_image(data, max_pixels=max_pixels, downscale_above=downscale_above).decode()


def read_image_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """:func:`decode_image` of a file's bytes (an unreadable file raises its ``OSError``)."""
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels)
