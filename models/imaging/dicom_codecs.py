"""A pydicom decoding plugin on imagecodecs: JPEG Lossless, 12-bit JPEG and HTJ2K.

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
    HTJ2KDecoder,
    HTJ2KLosslessDecoder,
    HTJ2KLosslessRPCLDecoder,
    JPEGExtended12BitDecoder,
    JPEGLosslessDecoder,
    JPEGLosslessSV1Decoder,
)

LABEL = "imagecodecs"
JPEG_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit)
# HTJ2K through imagecodecs' OpenJPEG 2.5 (jpeg2k), not its OpenJPH codec (htj2k), which
# let corrupt streams through with errors it could not raise.
HTJ2K_SYNTAXES = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)
SYNTAXES = JPEG_SYNTAXES + HTJ2K_SYNTAXES
DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2024.1",) for ts in SYNTAXES}


def is_available(ts: str) -> bool:
    if ts not in SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    codec = imagecodecs.JPEG8 if ts in JPEG_SYNTAXES else imagecodecs.JPEG2K
    return bool(codec.available)


def decode_frame(src: bytes, runner: Any) -> bytearray:
    """One encapsulated frame → its pixels, colour-by-pixel, in the smallest container."""
    import imagecodecs

    ts = runner.transfer_syntax
    arr = imagecodecs.jpeg8_decode(src) if ts in JPEG_SYNTAXES else imagecodecs.jpeg2k_decode(src)
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    if arr.ndim == 3:
        runner.set_option("planar_configuration", 0)
        pi = str(runner.photometric_interpretation)
        # libjpeg and OpenJPEG hand back RGB for YBR (JPEG) and YBR_ICT/RCT (HTJ2K).
        if (ts == uid.JPEGExtended12Bit and pi.startswith("YBR")) or (
                ts in HTJ2K_SYNTAXES and pi in (PI.YBR_ICT, PI.YBR_RCT)):
            runner.set_option("photometric_interpretation", PI.RGB)
    return bytearray(arr.tobytes())


_registered = False
_lock = threading.Lock()


def register() -> None:
    global _registered
    with _lock:  # add_plugin is not thread-safe
        if _registered:
            return
        for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder, JPEGExtended12BitDecoder,
                        HTJ2KLosslessDecoder, HTJ2KLosslessRPCLDecoder, HTJ2KDecoder):
            decoder.add_plugin(LABEL, (__name__, "decode_frame"))
        _registered = True
