"""DICOM bytes → a dataset and one decoded frame, for :mod:`models.imaging.dicom`.

Parsing (preamble-less files included), the transfer syntax, the decoder that can read it
(or a refusal naming the syntax), one frame, and the whitelisted metadata. Values from the
header are cleaned to one short line of printable ASCII before they go anywhere.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

from models.imaging import dicom_codecs
from models.imaging.errors import CorruptImageError, UnsupportedTransferSyntaxError

log = logging.getLogger(__name__)

dicom_codecs.register()  # JPEG Lossless and 12-bit JPEG through imagecodecs (libjpeg-turbo)

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def clean(value: Any, limit: int = 64) -> str:
    """A header value as one short line of printable ASCII (values come from the file)."""
    text = re.sub(r"[^\x20-\x7e]", "", str(value if value is not None else "")).strip()
    return text[:limit]


def clean_uid(value: Any) -> str:
    return re.sub(r"[^0-9.]", "", str(value if value is not None else ""))[:64]


def read(data: bytes) -> Dataset:
    try:
        # force: sniff_format has already vouched for it; it also reads preamble-less files.
        return dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ...
        log.info("unreadable DICOM: %s", type(exc).__name__)
        raise CorruptImageError("DICOM file is corrupt or truncated") from None


def transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; for files without one (no file meta, old ACR-NEMA
    style) the encoding pydicom detected while reading, recorded so the decoder sees it."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = ds.file_meta = FileMetaDataset()
    ts = file_meta.get("TransferSyntaxUID")
    if ts:
        return UID(clean_uid(ts) or "invalid")
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise CorruptImageError("DICOM file has no transfer syntax")
    if implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    file_meta.TransferSyntaxUID = ts
    return UID(ts)


def cannot_decode(ts: UID, detail: str = "") -> UnsupportedTransferSyntaxError:
    name = ts.name if ts.is_valid and ts.name != str(ts) else "unknown"
    return UnsupportedTransferSyntaxError(
        f"DICOM transfer syntax {clean(name, 120)} ({ts}){detail} cannot be decoded here"
    )


def decoder_for(ts: UID, ds: Dataset) -> Decoder:
    try:
        decoder = get_decoder(ts)
        available = decoder.is_available
    except NotImplementedError:  # video (MPEG, HEVC), unknown or private syntaxes
        available = False
    if not available:
        raise cannot_decode(ts)
    if (
        ts == JPEGExtended12Bit
        and int(ds.get("BitsStored") or 8) != 8
        and not {"pylibjpeg", dicom_codecs.LABEL} & set(decoder.available_plugins)
    ):
        # Only pylibjpeg-libjpeg and imagecodecs decode 12-bit JPEG (pydicom's Pillow and
        # GDCM plugins refuse it); without this check the failure would look like a corrupt
        # file (422) instead of a limitation of this installation (415).
        raise cannot_decode(ts, " with 12-bit samples")
    return decoder


def decode_frame(decoder: Decoder, ds: Dataset, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one frame, with Pillow first where it can: it is the decoder every raster
    upload already goes through, so other native decoders (GDCM) only see what Pillow
    cannot decode (JPEG Lossless, JPEG-LS), not every JPEG/JPEG 2000 DICOM."""
    plugins = decoder.available_plugins
    if "pillow" in plugins and len(plugins) > 1:
        try:
            return decoder.as_array(ds, index=index, decoding_plugin="pillow")
        except Exception as exc:
            log.debug(
                "Pillow could not decode DICOM frame (%s); trying %s",
                type(exc).__name__,
                ", ".join(p for p in plugins if p != "pillow"),
            )
    return decoder.as_array(ds, index=index)


def _integer(value: Any) -> int | None:
    """An IS value as an int (None when absent or malformed)."""
    try:
        return int(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def header_metadata(ds: Dataset, ts: UID, frames: int) -> dict[str, str | int | float | None]:
    # Whitelist only: patient and operator fields are never touched.
    return {
        "modality": clean(ds.get("Modality")),
        "body_part": clean(ds.get("BodyPartExamined")),
        "study_instance_uid": clean_uid(ds.get("StudyInstanceUID")),
        "series_instance_uid": clean_uid(ds.get("SeriesInstanceUID")),
        "sop_instance_uid": clean_uid(ds.get("SOPInstanceUID")),
        "series_description": clean(ds.get("SeriesDescription")),
        "instance_number": _integer(ds.get("InstanceNumber")),
        "frame": frames // 2 + 1 if frames > 1 else 1,  # 1-based: the one decoded
        "photometric": clean(ds.get("PhotometricInterpretation")),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": frames,
        "transfer_syntax": str(ts),
    }
