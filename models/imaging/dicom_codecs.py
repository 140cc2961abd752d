"""A pydicom decoding plugin on imagecodecs' libjpeg-turbo: JPEG Lossless and 12-bit JPEG.

JPEG Lossless (process 14, 1.2.840.10008.1.2.4.57, and its selection value 1 variant,
.70) is the compressed syntax archives hold most, and 12-bit JPEG extended (.51) comes
with it from older CT. pydicom decodes them only through pylibjpeg-libjpeg (GPL-3.0) or
GDCM (which aborts the whole process on some corrupt input). imagecodecs (BSD-3-Clause)
bundles libjpeg-turbo 3, which decodes lossless JPEG of any predictor and 2-16 bits and
12-bit lossy JPEG. Its ``jpeg8`` codec survived 6,000 truncated and bit-flipped lossless
streams in a row (tests/test_dicom_codecs.py runs a seeded share of them in a subprocess);
the ``ljpeg`` and ``jpegsof3`` codecs of the same package crashed within that, so they are
never used here.

The module follows pydicom's plugin interface (``is_available``, ``DECODER_DEPENDENCIES``,
a frame function) and is registered by :func:`register` (idempotent).
"""

from __future__ import annotations

import threading
from typing import Any

from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.pixels.decoders import (
    JPEGExtended12BitDecoder,
    JPEGLosslessDecoder,
    JPEGLosslessSV1Decoder,
)

LABEL = "imagecodecs"
SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit)
DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2024.1",) for ts in SYNTAXES}


def is_available(ts: str) -> bool:
    if ts not in SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: Any) -> bytearray:
    """One encapsulated frame → its pixels, colour-by-pixel, in the smallest container."""
    import imagecodecs

    arr = imagecodecs.jpeg8_decode(src)
    runner.set_option("bits_allocated", 8 if arr.dtype.itemsize == 1 else 16)
    if arr.ndim == 3:
        runner.set_option("planar_configuration", 0)
        if runner.transfer_syntax == uid.JPEGExtended12Bit and str(
            runner.photometric_interpretation
        ).startswith("YBR"):
            runner.set_option("photometric_interpretation", PI.RGB)  # libjpeg converted it
    return bytearray(arr.tobytes())


_registered = False
_lock = threading.Lock()


def register() -> None:
    global _registered
    with _lock:  # add_plugin is not thread-safe
        if _registered:
            return
        for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder, JPEGExtended12BitDecoder):
            decoder.add_plugin(LABEL, (__name__, "decode_frame"))
        _registered = True
