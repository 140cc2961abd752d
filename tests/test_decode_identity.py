"""Early downscaling must not change what ordinary images decode to: the model's accuracy
figures were measured on these pixels. The hashes below were taken with the decoder as it
was before downscaling existed (commit 0d57493), and every image here is decoded under the
service's pixel cap for the default 64 px input, as the service decodes it."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from models.imaging.decode import decode_image

CAP = (32 * 64) ** 2  # app.service.decoding.pixel_cap_for at 64 px


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def cases() -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:64, 0:64]
    yield "jpeg-64", _jpeg(((x * 3 + y * 2) % 256).astype(np.uint8))
    yield "ct-small-dicom", Path(get_testdata_file("CT_small.dcm")).read_bytes()
    yield "mr-small-dicom", Path(get_testdata_file("MR_small.dcm")).read_bytes()
    yield "png16-1024", _png(rng.integers(0, 4096, (1024, 1024), dtype=np.uint16))
    yield "png16-at-cap", _png(rng.integers(0, 65535, (2048, 2048), dtype=np.uint16))
    yield "rgba-300", _png(rng.integers(0, 256, (300, 300, 4), dtype=np.uint8))
    yield "jpeg-rgb-2000x1500", _jpeg(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8))


GOLDEN = {
    "jpeg-64": "f330a1062b3e7d0dbd53eb180a3f18a28be826e6a25ed33ebe3c0e0273684b47",
    "ct-small-dicom": "1726247861185cf0ee568146946d4b2bfcd6e845e30b50f22895ac96e8f29be8",
    "mr-small-dicom": "38ab8d87e706bf8d3b976e0afbf8d214c544c82a0092169ead1512024257e0f0",
    "png16-1024": "0421365788b493ce46ba801d9d2d6884f2d8846087d4493213e76f6d53ae8cfc",
    "png16-at-cap": "bcacd051a9eb4a0cd73c5440a835516e7d14a76ccb9c22006d9674559e0d1c30",
    "rgba-300": "055454d5f30d42417226e2a38f0bbdfcfc4eed1bab01cf769e23d0d7113442dc",
    "jpeg-rgb-2000x1500": "34bd36ccb0c95caeeb016241d1c98f3ef93a1164152c25827db404887d1921c5",
}


@pytest.mark.parametrize(("name", "data"), list(cases()), ids=[n for n, _ in cases()])
def test_ordinary_images_decode_as_before_under_the_cap(name: str, data: bytes) -> None:
    capped = decode_image(data, downscale_above=CAP).image
    assert hashlib.sha256(np.asarray(capped).tobytes()).hexdigest() == GOLDEN[name]
    plain = decode_image(data).image
    assert capped.mode == plain.mode and np.array_equal(np.asarray(capped), np.asarray(plain))


def test_above_the_cap_images_are_reduced_on_read_not_refused() -> None:
    rng = np.random.default_rng(3)
    big = rng.integers(0, 65535, (3000, 2100), dtype=np.uint16)  # 6.3 MP > 4.2 MP cap
    out = decode_image(_png(big), downscale_above=CAP)
    assert out.image.size == (1050, 1500)  # reduced by 2, the smallest integer that fits
    assert out.metadata["width"] == 2100 and out.metadata["decoded_width"] == 1050
    jpeg = decode_image(_jpeg(rng.integers(0, 256, (2400, 3200, 3), dtype=np.uint8)),
                        downscale_above=CAP)
    assert jpeg.image.size[0] * jpeg.image.size[1] <= CAP
