"""models.imaging: every supported format and mode decodes to 8-bit L/RGB,
and every hostile input becomes an ImageDecodeError with the right HTTP status.

Offline and fast: images are generated in memory, DICOM files come from pydicom's bundled
test data (``download=False``) or are built here with known pixel values.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

from models.imaging import dicom_codecs
from models.imaging.decode import DEFAULT_MAX_PIXELS, decode_image, read_image_file
from models.imaging.errors import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from models.imaging.formats import SUPPORTED_EXTENSIONS, DecodedImage, sniff_format
from models.imaging.render import render_png

RNG_SEED = 20240607

# --- helpers ----------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixels(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.image)


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return Path(str(path)).read_bytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG (correct CRCs) whose IHDR claims width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def make_dicom(
    frames: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    signed: bool = False,
    bits_stored: int = 12,
    **attrs: object,
) -> bytes:
    """A small DICOM file (CT-like, 16-bit) with the given pixel values.

    ``frames`` is (rows, cols) or (frames, rows, cols). With ``preamble=False`` the
    dataset is written bare (implicit VR little endian, no file meta), like old files.
    """
    frames = np.asarray(frames)
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-SECRET-42"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = frames.shape[-2:]
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = frames.astype(np.int16 if signed else np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def with_transfer_syntax(data: bytes, ts: UID) -> bytes:
    """Re-label a DICOM file as encapsulated in ``ts`` (the payload need not be valid:
    an undecodable syntax must be refused before any decoding is tried)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0..255, written out independently here."""
    c, w = center - 0.5, width - 1.0
    y = np.where(
        values <= c - w / 2,
        0.0,
        np.where(values > c + w / 2, 255.0, ((values - c) / w + 0.5) * 255.0),
    )
    return np.rint(y).astype(np.uint8)


@pytest.fixture(scope="module")
def gray() -> Image.Image:
    rng = np.random.default_rng(RNG_SEED)
    return Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8))


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    rng = np.random.default_rng(RNG_SEED + 1)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


# --- sniffing and API surface -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected", "content_type"),
    [
        ("PNG", "png", "image/png"),
        ("JPEG", "jpeg", "image/jpeg"),
        ("TIFF", "tiff", "image/tiff"),
        ("BMP", "bmp", "image/bmp"),
    ],
)
def test_raster_formats_sniffed_from_bytes(
    gray: Image.Image, fmt: str, expected: str, content_type: str
) -> None:
    data = encode(gray, fmt)
    assert sniff_format(data) == expected
    decoded = decode_image(data)
    assert (decoded.format, decoded.content_type) == (expected, content_type)
    assert decoded.image.mode == "L"
    assert decoded.image.size == gray.size
    assert decoded.metadata == {"width": 64, "height": 48, "mode": "L"}
    if fmt != "JPEG":
        assert np.array_equal(pixels(decoded), np.asarray(gray))


def test_file_name_is_ignored(tmp_path: Path, gray: Image.Image) -> None:
    path = tmp_path / "scan.png"  # a JPEG under a PNG name
    path.write_bytes(encode(gray, "JPEG"))
    decoded = read_image_file(path)
    assert decoded.format == "jpeg"
    assert decoded.content_type == "image/jpeg"


def test_supported_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} == set(
        SUPPORTED_EXTENSIONS
    )
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_error_classes() -> None:
    assert issubclass(UnsupportedTransferSyntaxError, UnsupportedFormatError)
    assert all(
        issubclass(c, ValueError) and issubclass(c, ImageDecodeError)
        for c in (UnsupportedFormatError, CorruptImageError, ImageTooLargeError)
    )
    # The decoder knows nothing of HTTP: app/api/errors.py maps these (test_api_errors.py).
    assert not hasattr(ImageDecodeError, "status_code")


def test_random_bytes_are_not_sniffed_as_anything() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(300):
        assert sniff_format(rng.bytes(int(rng.integers(0, 600)))) is None


# --- modes ------------------------------------------------------------------------------


def test_one_bit(gray: Image.Image) -> None:
    bilevel = gray.point(lambda v: 255 if v >= 128 else 0).convert("1")
    for fmt in ("PNG", "TIFF", "BMP"):
        decoded = decode_image(encode(bilevel, fmt))
        assert decoded.image.mode == "L"
        assert decoded.metadata["mode"] == "1"
        assert np.array_equal(pixels(decoded), (np.asarray(gray) >= 128) * 255)


def test_rgb_roundtrip(rgb: Image.Image) -> None:
    for fmt in ("PNG", "TIFF", "BMP"):
        decoded = decode_image(encode(rgb, fmt))
        assert decoded.image.mode == "RGB"
        assert np.array_equal(pixels(decoded), np.asarray(rgb))
    jpeg = decode_image(encode(rgb, "JPEG", quality=95))
    assert jpeg.image.mode == "RGB"


def test_rgba_and_la_composite_over_black() -> None:
    alpha = np.array([[0, 128, 255]], dtype=np.uint8)
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = alpha
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded.image.mode == "RGB"
    out = pixels(decoded).astype(int)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [200, 100, 50]
    assert np.abs(out[0, 1] - np.array([200, 100, 50]) * 128 / 255).max() <= 1

    la = np.stack([np.full((1, 3), 200, np.uint8), alpha], axis=-1)
    decoded = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    assert decoded.image.mode == "L"
    assert abs(pixels(decoded)[0].astype(int) - np.array([0, 100, 200])).max() <= 1


def test_palette_colour_and_gray(rgb: Image.Image, gray: Image.Image) -> None:
    colour = rgb.quantize(16)
    decoded = decode_image(encode(colour, "PNG"))
    assert decoded.image.mode == "RGB"
    assert np.array_equal(pixels(decoded), np.asarray(colour.convert("RGB")))

    gray_palette = gray.convert("P")  # web palette: only its gray entries get used
    assert gray_palette.mode == "P"
    decoded = decode_image(encode(gray_palette, "PNG"))
    assert decoded.image.mode == "L"
    assert np.array_equal(pixels(decoded), np.asarray(gray_palette.convert("L")))


def test_palette_with_transparency_composites_over_black() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert decoded.image.mode == "RGB"
    assert pixels(decoded).tolist() == [[[0, 0, 0], [0, 255, 0]]]


def test_cmyk_and_ycbcr_to_rgb() -> None:
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))  # pure cyan
    decoded = decode_image(encode(cmyk, "TIFF"))
    assert decoded.image.mode == "RGB"
    assert decoded.metadata["mode"] == "CMYK"
    assert pixels(decoded)[0, 0].tolist() == [0, 255, 255]
    jpeg = decode_image(encode(cmyk, "JPEG", quality=95))
    assert jpeg.image.mode == "RGB"
    assert np.abs(pixels(jpeg)[0, 0].astype(int) - [0, 255, 255]).max() <= 8

    red = Image.new("RGB", (4, 4), (255, 0, 0))
    decoded = decode_image(encode(red.convert("YCbCr"), "TIFF"))
    assert decoded.metadata["mode"] == "YCbCr"
    assert decoded.image.mode == "RGB"
    assert np.abs(pixels(decoded)[0, 0].astype(int) - [255, 0, 0]).max() <= 3


def test_16_bit_gradient_scaled_by_min_max() -> None:
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16)
    for data in (
        encode(Image.fromarray(ramp * 257), "PNG"),  # 0..65535
        encode(Image.fromarray(ramp * 10 + 1000), "TIFF"),  # 1000..3550
        encode(Image.frombytes("I;16B", (16, 16), (ramp * 7).astype(">u2").tobytes()), "TIFF"),
    ):
        decoded = decode_image(data)
        assert decoded.metadata["mode"] in ("I;16", "I;16B")
        assert decoded.image.mode == "L"
        assert np.array_equal(pixels(decoded), ramp)


def test_32_bit_and_float_scaled_by_min_max() -> None:
    ramp = np.arange(256).reshape(16, 16)
    decoded = decode_image(encode(Image.fromarray((ramp * 1000 - 5000).astype(np.int32)), "TIFF"))
    assert (decoded.metadata["mode"], decoded.image.mode) == ("I", "L")
    assert np.array_equal(pixels(decoded), ramp)

    floats = (ramp / 255.0 * 2.0 - 1.0).astype(np.float32)
    decoded = decode_image(encode(Image.fromarray(floats), "TIFF"))
    assert (decoded.metadata["mode"], decoded.image.mode) == ("F", "L")
    assert np.array_equal(pixels(decoded), ramp)


def test_constant_16_bit_image_is_black() -> None:
    decoded = decode_image(encode(Image.fromarray(np.full((8, 8), 1234, np.uint16)), "PNG"))
    assert decoded.image.mode == "L"
    assert not pixels(decoded).any()


def test_multipage_tiff_gives_first_page() -> None:
    pages = [Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert (pixels(decode_image(data)) == 10).all()


def test_exif_orientation_applied() -> None:
    image = Image.new("L", (32, 16), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.image.size == (16, 32)


def test_render_png_roundtrip(rgb: Image.Image, gray: Image.Image) -> None:
    for image in (rgb, gray):
        png = render_png(image)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert np.array_equal(pixels(decode_image(png)), np.asarray(image))


# --- hostile inputs ---------------------------------------------------------------------


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("scan.png", b"not really")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00" * 4096,
        b"hello, this is text\n" * 20,
        b"<!DOCTYPE html><html><body><img src=x></body></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04",
        b"BMW is a car, not a bitmap" * 4,
        b"\x89PN",
        zip_bytes(),
    ],
    ids=["empty", "one-zero", "zeros", "text", "html", "pdf", "gif", "bm-text", "png-stub", "zip"],
)
def test_not_an_image_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        decode_image(data)
    assert type(info.value) is UnsupportedFormatError
    assert str(info.value) == "not a supported image (PNG, JPEG, TIFF, BMP or DICOM)"


def test_zip_named_png(tmp_path: Path) -> None:
    path = tmp_path / "upload.png"
    path.write_bytes(zip_bytes())
    with pytest.raises(UnsupportedFormatError):
        read_image_file(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: "Corrupt EXIF data" for TIFF
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_is_corrupt(rgb: Image.Image, fmt: str) -> None:
    data = encode(rgb, fmt)
    for cut in (len(data) // 2, 40):
        with pytest.raises(CorruptImageError) as info:
            decode_image(data[:cut])
        assert "\n" not in str(info.value)


def test_png_bomb_refused_fast_without_decoding() -> None:
    data = png_claiming(50_000, 50_000)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    assert time.perf_counter() - start < 0.5
    assert str(info.value).startswith("image is too large")


def test_pillow_bomb_warning_becomes_error_not_warning() -> None:
    data = png_claiming(10_000, 10_000)  # over Pillow's warning threshold, under its error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping decode_image fails the test
        with pytest.raises(ImageTooLargeError):
            decode_image(data, max_pixels=200_000_000)
        with pytest.raises(ImageTooLargeError):
            decode_image(data)


def test_max_pixels_argument(gray: Image.Image) -> None:
    with pytest.raises(ImageTooLargeError, match="64x48"):
        decode_image(encode(gray, "PNG"), max_pixels=64 * 48 - 1)
    assert decode_image(encode(gray, "PNG"), max_pixels=64 * 48).image.size == (64, 48)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about mangled values
def test_mutated_files_only_raise_decode_errors(rgb: Image.Image) -> None:
    """Exceptions of Pillow/pydicom/numpy never leak, whatever the bytes."""
    rng = np.random.default_rng(RNG_SEED)
    seeds = [encode(rgb, fmt) for fmt in ("PNG", "JPEG", "TIFF", "BMP")]
    seeds.append(bundled("MR_small.dcm"))
    seeds.append(bundled("SC_rgb_rle.dcm"))
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for pos in rng.integers(0, len(data), int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                data = data[: int(rng.integers(1, len(data)))]
            try:
                decoded = decode_image(bytes(data))
            except ImageDecodeError as exc:
                assert "\n" not in str(exc) and "Traceback" not in str(exc)
            else:
                assert decoded.image.mode in ("L", "RGB")


# --- DICOM ------------------------------------------------------------------------------

HU = np.array([[-1000, -200, 0, 39], [40, 41, 100, 240], [241, 500, 1000, 3071]])


def test_dicom_modality_lut_then_window() -> None:
    stored = HU + 1024  # Rescale Intercept -1024 brings stored values back to HU
    data = make_dicom(
        stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    assert sniff_format(data) == "dicom"
    decoded = decode_image(data)
    assert (decoded.format, decoded.content_type) == ("dicom", "application/dicom")
    assert decoded.image.mode == "L"
    assert np.array_equal(pixels(decoded), window(HU, 40, 400))


def test_dicom_slope_and_first_of_several_windows() -> None:
    stored = (HU + 1024) // 2
    data = make_dicom(
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[40, 400],
        WindowWidth=[400, 2000],
    )
    assert np.array_equal(pixels(decode_image(data)), window(stored * 2 - 1024, 40, 400))


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID", "NOT_A_FUNCTION"])
def test_dicom_voi_lut_functions(function: str) -> None:
    """PS3.3 C.11.2.1.3, written out independently; an unknown function is read as LINEAR."""
    values = HU.astype(np.float64)
    data = make_dicom(HU, signed=True, bits_stored=16, WindowCenter=40, WindowWidth=400,
                      VOILUTFunction=function)
    if function == "LINEAR_EXACT":
        expected = np.clip((values - 40) / 400 + 0.5, 0, 1) * 255
    elif function == "SIGMOID":
        expected = 255 / (1 + np.exp(-4 * (values - 40) / 400))
    else:
        expected = window(HU, 40, 400).astype(np.float64)
    got = pixels(decode_image(data)).astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5 + 1e-9


def test_dicom_invalid_window_falls_back_to_robust_min_max() -> None:
    """A LINEAR width under 1 is no window (PS3.3 C.11.2.1.2.1): the 0.5-99.5 percentile
    min-max is used, exactly as for a file without one."""
    bad = make_dicom(HU, signed=True, bits_stored=16, WindowCenter=40, WindowWidth=0.5)
    none = make_dicom(HU, signed=True, bits_stored=16)
    assert np.array_equal(pixels(decode_image(bad)), pixels(decode_image(none)))
    assert len(np.unique(pixels(decode_image(bad)))) > 2  # not a step at the bad window


def test_dicom_monochrome1_inverted() -> None:
    stored = HU + 1024
    common: dict[str, Any] = {
        "RescaleSlope": 1,
        "RescaleIntercept": -1024,
        "WindowCenter": 40,
        "WindowWidth": 400,
    }
    mono2 = pixels(decode_image(make_dicom(stored, **common)))
    mono1 = pixels(decode_image(make_dicom(stored, photometric="MONOCHROME1", **common)))
    assert np.array_equal(mono1, 255 - mono2)


def test_dicom_voi_lut_sequence() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]  # 256 entries from stored value 0, 16-bit output
    lut.add_new("LUTData", "US", list(range(0, 512, 2)))  # y = 2x: its range is 0..510
    data = make_dicom(np.array([[0, 10, 255, 1000]]), VOILUTSequence=[lut])
    assert pixels(decode_image(data)).tolist() == [[0, 10, 255, 255]]


def test_dicom_enhanced_functional_groups() -> None:
    """Enhanced multi-frame objects keep rescale and window in functional groups."""
    shared = Dataset()
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = [rescale]
    per_frame = []
    for center in (500, 40, 500):
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 400
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    volume = np.stack([HU + 1024] * 3)
    data = make_dicom(
        volume,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=per_frame,
    )
    assert np.array_equal(pixels(decode_image(data)), window(HU, 40, 400))


def test_dicom_without_window_uses_robust_min_max() -> None:
    ramp = np.arange(64 * 64).reshape(64, 64)
    ramp[0, 0] = 4095  # one hot pixel must not set the white point
    decoded = decode_image(make_dicom(ramp))
    out = pixels(decoded)
    assert out.min() == 0 and out.max() == 255
    assert 120 <= out[32, 0] <= 135  # the middle of the ramp stays mid-gray
    assert (np.diff(out.ravel()[1:].astype(int)) >= 0).all()
    assert not pixels(decode_image(make_dicom(np.full((4, 4), 700)))).any()


def test_dicom_signed_pixels() -> None:
    data = make_dicom(HU, signed=True, bits_stored=16, WindowCenter=40, WindowWidth=400)
    assert np.array_equal(pixels(decode_image(data)), window(HU, 40, 400))


def test_dicom_middle_frame_of_multiframe() -> None:
    volume = np.stack([np.full((4, 5), 100 * k) for k in range(5)])
    decoded = decode_image(make_dicom(volume, WindowCenter=200, WindowWidth=401))
    assert decoded.metadata["frames"] == 5
    assert decoded.image.size == (5, 4)
    assert (pixels(decoded) == window(np.array(200), 200, 401)).all()
    assert window(np.array(200), 200, 401) != window(np.array(100), 200, 401)


def test_dicom_metadata_has_uids_and_no_patient_fields() -> None:
    data = make_dicom(HU + 1024, RescaleSlope=1, RescaleIntercept=-1024)
    ds = pydicom.dcmread(io.BytesIO(data))
    meta = decode_image(data).metadata
    assert meta == {
        "modality": "CT",
        "body_part": "CHEST",
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "series_description": "",
        "instance_number": None,
        "frame": 1,
        "photometric": "MONOCHROME2",
        "rows": 3,
        "columns": 4,
        "frames": 1,
        "transfer_syntax": ExplicitVRLittleEndian,
    }
    flat = " ".join(f"{k}={v}" for k, v in meta.items()).lower()
    for secret in ("patient", "doe", "jane", "pid-secret", "19700101"):
        assert secret not in flat


def test_dicom_without_preamble() -> None:
    data = make_dicom(HU + 1024, preamble=False, WindowCenter=1064, WindowWidth=400)
    assert data[128:132] != b"DICM"
    assert sniff_format(data) == "dicom"
    decoded = decode_image(data)
    assert decoded.metadata["transfer_syntax"] == ImplicitVRLittleEndian
    assert np.array_equal(pixels(decoded), window(HU + 1024, 1064, 400))


def test_dicom_with_tiff_preamble_is_dicom() -> None:
    data = bytearray(make_dicom(HU + 1024))
    data[:8] = b"II*\x00\x08\x00\x00\x00"  # PS3.10 allows a TIFF header in the preamble
    assert sniff_format(bytes(data)) == "dicom"
    assert decode_image(bytes(data)).format == "dicom"


def test_dicom_too_large_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(make_dicom(HU + 1024), max_pixels=11)
    assert "exceeds the limit of 11 pixels" in str(info.value)


def test_dicom_mr_small_window_matches_its_header() -> None:
    data = bundled("MR_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    decoded = decode_image(data)
    assert decoded.image.mode == "L"
    expected = window(ds.pixel_array.astype(float), float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.array_equal(pixels(decoded), expected)
    assert decoded.metadata["modality"] == "MR"
    assert decoded.metadata["sop_instance_uid"] == ds.SOPInstanceUID
    assert "patient" not in " ".join(map(str, decoded.metadata)).lower()
    # Same pixels whatever the encoding, RLE (decoded natively) included.
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        assert np.array_equal(pixels(decode_image(bundled(name))), expected), name


def test_dicom_ct_small() -> None:
    decoded = decode_image(bundled("CT_small.dcm"))
    assert decoded.image.mode == "L" and decoded.image.size == (128, 128)
    assert decoded.metadata["modality"] == "CT"
    assert int(pixels(decoded).max()) == 255


def test_dicom_jpeg2000_lossless_decodes_like_uncompressed() -> None:
    expected = pixels(decode_image(bundled("MR_small.dcm")))
    assert np.array_equal(pixels(decode_image(bundled("MR_small_jp2klossless.dcm"))), expected)


def test_dicom_jpeg_ls_decodes_with_pyjpegls() -> None:
    if not get_decoder(JPEGLSLossless).is_available:
        pytest.skip("no JPEG-LS decoder installed (pyjpegls)")
    expected = pixels(decode_image(bundled("MR_small.dcm")))
    assert np.array_equal(pixels(decode_image(bundled("MR_small_jpeg_ls_lossless.dcm"))), expected)
    colour = decode_image(bundled("SC_rgb_jls_lossy_line.dcm"))
    assert colour.image.mode == "RGB"


def test_dicom_colour() -> None:
    reference = pixels(decode_image(bundled("SC_rgb_rle.dcm")))
    assert reference.shape == (100, 100, 3)
    # 16-bit RLE RGB: one scale factor for all channels, same picture.
    wide = decode_image(bundled("SC_rgb_rle_16bit.dcm"))
    assert wide.image.mode == "RGB"
    assert np.abs(pixels(wide).astype(int) - reference).max() <= 1
    # YBR_FULL JPEG baseline is converted to RGB (lossy, so compare loosely).
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        ybr = decode_image(bundled(name))
        assert ybr.image.mode == "RGB"
        assert str(ybr.metadata["photometric"]).startswith("YBR")
        assert np.abs(pixels(ybr).astype(int) - reference).mean() < 3, name
    # Two-frame colour: the middle (second) frame.
    two = decode_image(bundled("SC_rgb_rle_2frame.dcm"))
    assert two.metadata["frames"] == 2 and two.image.mode == "RGB"


def test_dicom_palette_colour() -> None:
    decoded = decode_image(bundled("examples_palette.dcm"))
    assert decoded.image.mode == "RGB"
    assert decoded.metadata["photometric"] == "PALETTE COLOR"
    assert pixels(decoded).max() > 128


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(CorruptImageError, match="^DICOM file has no pixel data$"):
        decode_image(bundled("rtplan.dcm"))


def test_dicom_truncated() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(bundled("MR_truncated.dcm"))
    data = bundled("CT_small.dcm")
    # (CT_small has a few bytes after its pixel data: cutting those loses no pixel.)
    for cut in (200, len(data) // 2, len(data) - 1000):
        with pytest.raises(CorruptImageError):
            decode_image(data[:cut])


def test_dicom_undecodable_transfer_syntax_is_named() -> None:
    data = with_transfer_syntax(make_dicom(HU + 1024), MPEG2MPML)
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        decode_image(data)
    assert str(info.value) == (
        f"DICOM transfer syntax {MPEG2MPML.name} ({MPEG2MPML}) cannot be decoded here"
    )
    unknown = with_transfer_syntax(make_dicom(HU + 1024), UID("1.2.3.4.5"))
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"unknown \(1\.2\.3\.4\.5\)"):
        decode_image(unknown)


def test_dicom_bundled_compressed_files_decode_or_name_their_syntax() -> None:
    """Each bundled compressed file decodes when this installation has a plugin for its
    syntax, and is refused as 415, naming the syntax, when it has none: no third outcome,
    and no skip (with imagecodecs installed, all of them decode)."""
    dicom_codecs.register()  # as importing the DICOM reader does: order-independent
    cases = [("JPEG-lossy.dcm", JPEGExtended12Bit, {"pylibjpeg", "imagecodecs"})]  # 12-bit
    cases.append(("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, set()))
    cases.append(("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, set()))  # imagecodecs, gdcm, ...
    for name, ts, enabling_plugin in cases:
        decoder = get_decoder(ts)
        plugins = decoder.available_plugins
        if (enabling_plugin and enabling_plugin & set(plugins)) or (
            not enabling_plugin and decoder.is_available
        ):
            decoded = decode_image(bundled(name))
            assert min(decoded.image.size) > 0, name
            assert np.asarray(decoded.image).std() > 0, name  # pixels, not a blank frame
            continue
        with pytest.raises(UnsupportedTransferSyntaxError, match=str(ts).replace(".", r"\.")):
            decode_image(bundled(name))
