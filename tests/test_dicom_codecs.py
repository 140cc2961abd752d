"""JPEG Lossless (process 14, SV1 and other predictors) and 12-bit JPEG through
imagecodecs' libjpeg-turbo: decoded exactly, corrupt streams refused without a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest

from models.imaging.decode import decode_image
from models.imaging.errors import ImageDecodeError
from tests.dicomfiles import bundled, ct_slice, htj2k, jpeg_lossless


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data).image)


@pytest.mark.parametrize("predictor", [1, 2, 5, 7])
def test_jpeg_lossless_decodes_like_uncompressed(predictor: int) -> None:
    for plain in (ct_slice("1.2.3", "1.2.3.4", 5), bundled("CT_small.dcm"),
                  bundled("MR_small.dcm")):
        lossless = jpeg_lossless(plain, predictor=predictor)
        ts = pydicom.dcmread(pydicom.filebase.DicomBytesIO(lossless)).file_meta.TransferSyntaxUID
        assert ts == ("1.2.840.10008.1.2.4.70" if predictor == 1 else "1.2.840.10008.1.2.4.57")
        assert np.array_equal(_pixels(lossless), _pixels(plain))


def test_htj2k_lossless_decodes_like_uncompressed() -> None:
    for plain in (ct_slice("1.2.3", "1.2.3.4", 5), bundled("CT_small.dcm")):
        assert np.array_equal(_pixels(htj2k(plain)), _pixels(plain))


def test_bundled_jpeg_lossless_and_12_bit_files_decode() -> None:
    rgb = decode_image(bundled("SC_rgb_jpeg_gdcm.dcm"))  # JPEG Lossless SV1, RGB
    assert rgb.image.mode == "RGB"
    reference = np.asarray(decode_image(bundled("SC_rgb_rle.dcm")).image)
    assert np.abs(np.asarray(rgb.image).astype(int) - reference).mean() < 3
    twelve = decode_image(bundled("JPEG-lossy.dcm"))  # 12-bit JPEG extended
    assert twelve.image.mode == "L" and np.asarray(twelve.image).std() > 10


FUZZ = textwrap.dedent("""
    import sys
    import numpy as np
    from models.imaging.decode import decode_image
    from models.imaging.errors import ImageDecodeError
    from tests.dicomfiles import ct_slice, htj2k, jpeg_lossless
    rng = np.random.default_rng(7)
    plain = ct_slice("1.2.3", "1.2.3.4", 3, size=96)
    if sys.argv[1] == "jpeg":
        src = jpeg_lossless(plain, predictor=4)
        body = src.index(b"\\xff\\xd8")  # the JPEG stream inside the file
    else:
        src = htj2k(plain)
        body = src.index(b"\\xff\\x4f\\xff\\x51")  # the J2K codestream
    refused = 0
    for i in range(400):
        b = bytearray(src)
        if i % 2:
            b = b[: int(rng.integers(body, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 6))):
                b[int(rng.integers(body, len(b)))] = int(rng.integers(0, 256))
        try:
            decode_image(bytes(b))
        except ImageDecodeError:
            refused += 1
    print("refused", refused)
""")


@pytest.mark.parametrize("codec", ["jpeg", "htj2k"])
def test_corrupt_streams_never_crash_the_process(codec: str) -> None:
    """In a subprocess, so that a crash in native code fails this test, not the run."""
    out = subprocess.run([sys.executable, "-c", FUZZ, codec], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 100  # most are refused (422), none crash


def test_truncated_jpeg_lossless_is_a_decode_error() -> None:
    data = jpeg_lossless(ct_slice("1.2.3", "1.2.3.4", 3), predictor=1)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) - 3000])
