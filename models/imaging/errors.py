"""Why an image could not be decoded: the only exceptions :mod:`models.imaging` raises.

``str(e)`` is one line, safe to show a client (no raw bytes, no patient data). Exceptions of
Pillow, pydicom and numpy never leak out of the package. They carry no HTTP status: the
service maps them in :mod:`app.api.errors`.
"""

from __future__ import annotations


class ImageDecodeError(ValueError):
    """Base of every decode failure; ``str(e)`` is one line, safe to show a client."""


class UnsupportedFormatError(ImageDecodeError):
    """Not an image this service reads (text, HTML, ZIP, PDF, GIF, empty, ...)."""


class UnsupportedTransferSyntaxError(UnsupportedFormatError):
    """A DICOM file whose (compressed) transfer syntax no installed decoder handles."""


class CorruptImageError(ImageDecodeError):
    """A known format that is truncated or broken, or a DICOM file without pixel data."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed: refused before the pixels are decoded."""

    @classmethod
    def of_size(cls, width: int, height: int, max_pixels: int) -> ImageTooLargeError:
        return cls(
            f"image is too large: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
        )
