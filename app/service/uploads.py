"""Upload checks and preprocessing: bytes → validated, decoded, model-ready arrays.

Plain functions (they block), run by the retriever in worker threads. Every check of a
request happens here before anything is written, so ``POST /index`` is all-or-nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.service.decoding import Decoder
from app.service.errors import InvalidInput
from app.service.store import DicomFields
from models.embed import Embedder
from models.imaging.errors import ImageDecodeError
from models.imaging.formats import DecodedImage
from models.imaging.render import render_png


@dataclass(frozen=True)
class Upload:
    data: bytes = field(repr=False)
    filename: str = ""
    label: str | None = None  # None: the predicted class is stored
    metadata: dict[str, Any] = field(default_factory=dict)
    wado_url: str | None = None  # where an archive serves this instance (WADO-RS)


Key = tuple[str, str, int]  # ("sop", SOP Instance UID, frame) or ("sha", sha256, 0)


@dataclass(frozen=True)
class Prepared:
    upload: Upload
    sha256: str
    format: str
    content_type: str
    metadata: dict[str, Any]
    array: np.ndarray  # uint8 (C, S, S)
    decoded: DecodedImage = field(repr=False)
    dicom: DicomFields | None = None

    @property
    def key(self) -> Key:
        """What makes two uploads the same item: the SOP instance and frame for DICOM (any
        transfer syntax, any header edit), the bytes for everything else."""
        if self.dicom is not None:
            return "sop", self.dicom.sop_uid, self.dicom.frame
        return "sha", self.sha256, 0


def dicom_fields(decoded: DecodedImage) -> DicomFields | None:
    """The identity columns of a decoded DICOM image; None without a SOP Instance UID."""
    md = decoded.metadata
    if decoded.format != "dicom" or not md.get("sop_instance_uid"):
        return None

    def text(name: str) -> str | None:
        value = md.get(name)
        return str(value) if value not in (None, "") else None

    number = md.get("instance_number")
    return DicomFields(
        study_uid=str(md.get("study_instance_uid") or ""),
        series_uid=str(md.get("series_instance_uid") or ""),
        sop_uid=str(md["sop_instance_uid"]),
        frame=int(md.get("frame") or 1),
        modality=text("modality"), body_part=text("body_part"),
        series_description=text("series_description"),
        instance_number=int(number) if isinstance(number, int) else None,
    )


def _describe(i: int, filename: str) -> str:
    # The client's own file name, shortened and printable, to say which file failed.
    name = "".join(c for c in filename if c.isprintable())[:80]
    return f"file {i + 1}" + (f" ({name!r})" if name else "")


def _safe_metadata(decoded: DecodedImage) -> dict[str, Any]:
    # The decoder never reads patient fields; this is a second guard in case one slips in.
    return {k: v for k, v in decoded.metadata.items() if "patient" not in k.lower()}


def decode_checked(data: bytes, what: str, decoder: Decoder, *, reduce: bool = True
                   ) -> DecodedImage:
    if not data:
        raise InvalidInput(f"{what}: empty file")
    try:
        return decoder.decode(data, reduce=reduce)
    except ImageDecodeError as e:
        # Same class (so the same HTTP status), message naming the file.
        raise type(e)(f"{what}: {e}") from None


def prepare_uploads(
    uploads: list[Upload], embedder: Embedder, classes: list[str], decoder: Decoder
) -> list[Prepared]:
    """Validate and decode every upload; raises on the first bad one."""
    out: list[Prepared] = []
    for i, up in enumerate(uploads):
        what = _describe(i, up.filename)
        if up.label is not None and up.label not in classes:
            raise InvalidInput(
                f"{what}: unknown label {up.label!r}; known: {', '.join(classes)}"
            )
        decoded = decode_checked(up.data, what, decoder)
        out.append(Prepared(
            upload=up,
            sha256=hashlib.sha256(up.data).hexdigest(),
            format=decoded.format,
            content_type=decoded.content_type,
            metadata={**_safe_metadata(decoded), **up.metadata},
            array=embedder.prepare(decoded.image),
            decoded=decoded,
            dicom=dicom_fields(decoded),
        ))
    return out


def prepare_query(data: bytes, embedder: Embedder, decoder: Decoder) -> np.ndarray:
    return embedder.prepare(decode_checked(data, "file", decoder).image)


def prepare_query_dicom(data: bytes, embedder: Embedder, decoder: Decoder
                        ) -> tuple[np.ndarray, DicomFields | None]:
    """The query's model input and, for a DICOM query, its identity (its study)."""
    decoded = decode_checked(data, "file", decoder)
    return embedder.prepare(decoded.image), dicom_fields(decoded)


def render_upload(data: bytes, decoder: Decoder) -> bytes:
    """The PNG ``GET /images/{id}`` would answer for these bytes once stored (stores nothing).

    Within the decode budget, but never reduced: it must match what that route shows."""
    return render_png(decode_checked(data, "file", decoder, reduce=False).image)
