"""DICOM → 8-bit PIL image, the way a radiologist's viewer would first show it.

Pipeline (PS3.3 C.11): decode one frame (the middle one of a multi-frame volume or cine),
modality LUT (Rescale Slope/Intercept, to Hounsfield units for CT), then the VOI LUT or
window the modality chose (the first one when several are offered; LINEAR, LINEAR_EXACT
and SIGMOID windows, all by pydicom's own functions) or, without one, a robust min-max
(0.5th-99.5th percentile, so a few hot pixels or the air around a CT do not wash the image
out), then MONOCHROME1 inversion. Colour (RGB, YBR_*, PALETTE COLOR) becomes "RGB".

Reading the file and decoding its frame is :mod:`models.imaging.dicom_read`; this module
turns the frame's values into display pixels. Only :func:`decode_dicom` is public, and it
is meant to be reached through :func:`models.imaging.decode.decode_image`. Patient fields
(name, id, birth date, ...) are never read, so they cannot reach a message, a log line or
the returned metadata.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

from models.imaging.dicom_read import (
    PIXEL_TAGS,
    clean,
    decode_frame,
    decoder_for,
    header_metadata,
    read,
    transfer_syntax,
)
from models.imaging.errors import (
    CorruptImageError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
)
from models.imaging.formats import CONTENT_TYPES, DecodedImage
from models.imaging.scale import PendingDecode, footprint, reduction

log = logging.getLogger(__name__)

# Percentile estimation on a strided subsample above this many pixels: the percentiles of
# a 4k x 4k mammogram do not need all 16M values sorted.
_PERCENTILE_SAMPLE = 1 << 20


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """Enhanced multi-frame objects keep rescale and window per frame (or shared) in
    functional groups instead of at the top level (PS3.3 C.7.6.16)."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq and len(seq) > i:
            inner = seq[i].get(sequence)
            if inner:
                return inner[0]
    return None


# pydicom windows onto the stored range of the dataset it is given; the one built in
# _window_to_unit says unsigned 16-bit without rescale, so the output is 0..65535 exactly.
_WINDOW_FULL = float(2**16 - 1)
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _window_to_unit(
    values: np.ndarray, center: float, width: float, function: str
) -> np.ndarray | None:
    """VOI window (PS3.3 C.11.2.1.2/3) to 0..1 by pydicom's :func:`apply_windowing`, or
    None when the window is invalid (``width < 1`` for LINEAR, ``<= 0`` otherwise)."""
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"  # MONOCHROME1 is inverted afterwards
    window.BitsStored = 16
    window.PixelRepresentation = 0
    window.WindowCenter = center
    window.WindowWidth = width
    # An unknown function is read as LINEAR, the default (pydicom would refuse it).
    window.VOILUTFunction = function if function in _VOI_FUNCTIONS else "LINEAR"
    try:
        out: np.ndarray = apply_windowing(values, window)
    except ValueError:
        return None
    return out / _WINDOW_FULL


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS (several windows: take the first)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _voi_to_unit(values: np.ndarray, ds: Dataset, index: int) -> np.ndarray | None:
    """The file's own VOI (LUT or window) mapped to 0..1, or None when it has none."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        descriptor = item.get("LUTDescriptor")
        if descriptor and item.get("LUTData") is not None:
            first_map, entries = int(descriptor[1]), int(descriptor[0]) or 65536
            ints = np.rint(values).astype(np.int64)
            mapped = apply_voi(ints, ds).astype(np.float32)
            table = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int64), ds)
            lo, hi = float(table.min()), float(table.max())
            return (mapped - lo) / (hi - lo) if hi > lo else np.zeros_like(mapped)
    source: Dataset | None = (
        ds if "WindowCenter" in ds else _frame_item(ds, index, "FrameVOILUTSequence")
    )
    if source is None or source.get("WindowCenter") is None or source.get("WindowWidth") is None:
        return None
    function = clean(source.get("VOILUTFunction") or "LINEAR").upper()
    return _window_to_unit(
        values, _first(source.WindowCenter), _first(source.WindowWidth), function
    )


def _robust_to_unit(values: np.ndarray) -> np.ndarray:
    """0.5th-99.5th percentile → 0..1 (plain min-max if that range is empty)."""
    flat = values.ravel()
    mask = np.isfinite(flat)
    finite = flat if mask.all() else flat[mask]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    sample = finite[:: max(1, finite.size // _PERCENTILE_SAMPLE)]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.float32)
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0)


def _unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 255.0).astype(np.uint8)


def _monochrome(arr: np.ndarray, ds: Dataset, photometric: str, index: int) -> np.ndarray:
    modality_source: Dataset = ds
    if "ModalityLUTSequence" not in ds and "RescaleSlope" not in ds:
        modality_source = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    values = apply_modality_lut(arr, modality_source)
    values = np.asarray(values, dtype=np.float32)
    unit = _voi_to_unit(values, ds, index)
    if unit is None:
        unit = _robust_to_unit(values)
    out = _unit_to_uint8(unit)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        np.subtract(255, out, out=out)
    return out


def _colour(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.dtype == np.uint8:
        return arr
    top = float(arr.max()) if arr.size else 0.0
    if photometric == "PALETTE COLOR":
        # 16-bit LUT entries span 0..65535; some writers put 8-bit values in them.
        full = 255.0 if top <= 255 else 65535.0
    else:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        full = max(float(2**bits - 1), top)
    # One factor for all three channels: scaling them separately would shift the hues.
    scaled = np.clip(arr.astype(np.float32) * (255.0 / full), 0, 255) if full > 0 else arr * 0
    return np.rint(scaled).astype(np.uint8)


def _reduce_frame(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean of every k x k block (the last partial row and column of blocks dropped),
    rounded back to the stored dtype: the LUTs after it index by stored value."""
    h, w = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k
    blocks = arr[:h, :w].reshape(h // k, k, w // k, k, *arr.shape[2:])
    # float32 accumulation over a view: no full-size float copy is made.
    means = blocks.mean(axis=(1, 3), dtype=np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(means), info.min, info.max).astype(arr.dtype)
    return means.astype(arr.dtype)


def _header(ds: Dataset, max_pixels: int) -> tuple[int, int, int, Any]:
    """(rows, columns, frames, decoder) once the header is checked; nothing decoded yet."""
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise CorruptImageError("DICOM file has no pixel data")
    ts = transfer_syntax(ds)
    decoder = decoder_for(ts, ds)
    if ds.get("Rows") is None or ds.get("Columns") is None:
        raise CorruptImageError("DICOM file has no image size (Rows/Columns)")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows <= 0 or columns <= 0:
        raise CorruptImageError("DICOM file has no pixels (zero Rows or Columns)")
    if rows * columns > max_pixels:
        raise ImageTooLargeError.of_size(columns, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames") or 1)
    return rows, columns, frames, decoder


def _decode(ds: Dataset, decoder: Any, frames: int, k: int) -> DecodedImage:
    ts = transfer_syntax(ds)
    index = frames // 2 if frames > 1 else 0
    # Only the chosen frame is decoded, never the whole volume.
    arr, info = decode_frame(decoder, ds, index)
    if k > 1:
        arr = _reduce_frame(arr, k)
    photometric = clean(
        info.get("photometric_interpretation") or ds.get("PhotometricInterpretation")
    ).upper()
    samples = arr.shape[-1] if arr.ndim == 3 else 1
    if samples == 1 and photometric != "PALETTE COLOR":
        pixels = _monochrome(arr, ds, photometric, index)
    elif samples == 3 or photometric == "PALETTE COLOR":
        pixels = _colour(arr, ds, photometric)
    else:
        raise UnsupportedFormatError(
            f"DICOM images with {samples} samples per pixel are not supported"
        )
    metadata = header_metadata(ds, ts, frames)
    if k > 1:
        metadata["decoded_rows"], metadata["decoded_columns"] = pixels.shape[:2]
    return DecodedImage(
        image=Image.fromarray(np.ascontiguousarray(pixels)),
        format="dicom",
        content_type=CONTENT_TYPES["dicom"],
        metadata=metadata,
    )


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageTooLargeError("DICOM image is too large to decode here") from None
    except Exception as exc:  # pydicom/numpy: truncated pixel data, bad element values, ...
        # Type only: pydicom messages can quote element values from the file.
        log.info("undecodable DICOM pixel data: %s", type(exc).__name__)
        raise CorruptImageError("DICOM pixel data is corrupt or truncated") from None


def open_dicom(data: bytes, *, max_pixels: int, downscale_above: int | None = None
               ) -> PendingDecode:
    """DICOM bytes (sniffed as such): header read and checked, cost known.

    Above ``downscale_above`` pixels the frame is reduced by block means right after it
    is decoded, before the float pipeline (modality LUT, window), which would otherwise
    hold several float copies of the full frame.
    """
    ds = read(data)
    with _errors():
        rows, columns, frames, decoder = _header(ds, max_pixels)
        k = reduction(columns, rows, downscale_above)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 16)
        kept = math.ceil(rows / k) * math.ceil(columns / k)
        # The decoded frame at full size, the reduced one, and its float pipeline
        # (apply_modality_lut works in float64: 8 bytes, then float32 copies).
        cost = footprint(rows * columns * samples, max(1, bits // 8), kept, samples,
                         extra=kept * samples * 8)

    def decode() -> DecodedImage:
        with _errors():
            return _decode(ds, decoder, frames, k)

    return PendingDecode("dicom", columns, rows, k, cost, decode)


def decode_dicom(data: bytes, *, max_pixels: int, downscale_above: int | None = None
                 ) -> DecodedImage:
    """DICOM bytes (sniffed as such) → 8-bit "L" or "RGB" image; see the module docstring."""
    return open_dicom(data, max_pixels=max_pixels, downscale_above=downscale_above).decode()
