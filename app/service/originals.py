"""What is kept of an upload as its "original": ``CBMIR_STORE_ORIGINALS``.

* ``deidentified`` (default): DICOM is stored after the PS3.15 Basic Application Level
  Confidentiality Profile with the Retain UIDs Option, by dicom-anonymizer (BSD-3-Clause,
  maintained, its tables generated from PS3.15 Annex E): patient, operator and
  institution fields removed, emptied or replaced, dates replaced, private tags removed,
  UIDs kept (they are the item's identity and what a viewer opens), then
  PatientIdentityRemoved ``YES`` and DeidentificationMethod (Code Sequence 113100,
  113110) recorded. Other formats are stored as they came.
* ``original``: the bytes as they came (``?original=true`` returns them: put it behind
  ``CBMIR_API_KEY_FOR_READS``).
* ``none``: only what serving needs: the PNG rendering (what ``GET /images/{id}``,
  thumbnails and find-similar use), the UIDs and fields in the row, and the WADO-RS
  reference when the instance came from an archive; ``?original=true`` then fetches
  from the archive, or answers 404.

De-identification runs before the write lock is taken; if it fails, the upload is
refused (nothing of it is written), never stored with its headers.
"""

from __future__ import annotations

import io
import logging
from typing import Literal

from app.service.errors import InvalidInput
from app.service.store import StoredAs
from app.service.uploads import Prepared
from models.imaging.render import render_png

log = logging.getLogger(__name__)

Policy = Literal["deidentified", "original", "none"]
PROFILE = "PS3.15 Basic Profile, Retain UIDs Option"  # LO: 64 characters at most
# PS3.16 CID 7050: Basic Application Confidentiality Profile, Retain UIDs Option.
_METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113110", "Retain UIDs Option"))
_RULES_VERSION = "dicomfields_2026c"


def _retain_uid_rules() -> dict[tuple[int, ...], object]:
    """dicom-anonymizer's profile with every UID action turned into "keep"."""
    from dicomanonymizer import simpledicomanonymizer as sda
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    try:
        tags = dicom_anonymization_database_selector(_RULES_VERSION)
    except ValueError:  # an older release of the library
        tags = dicom_anonymization_database_selector()
    return {tuple(t): sda.keep for t in (*tags["U_TAGS"], *tags["X_Z_U_STAR_TAGS"])}


def deidentify_dicom(data: bytes) -> bytes:
    """DICOM bytes → the same instance de-identified (see the module docstring)."""
    import pydicom
    from dicomanonymizer import simpledicomanonymizer as sda
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        sda.anonymize_dataset(ds, extra_anonymization_rules=_retain_uid_rules(),
                              delete_private_tags=True)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = PROFILE
        codes = []
        for value, meaning in _METHOD_CODES:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
            codes.append(code)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=bool(getattr(ds, "file_meta", None)))
        return buf.getvalue()
    except Exception as exc:
        # The type only: a message could quote a header value.
        log.warning("de-identification failed: %s", type(exc).__name__)
        raise InvalidInput("DICOM file could not be de-identified, so it was not stored "
                           "(CBMIR_STORE_ORIGINALS=deidentified)") from None


def kept(p: Prepared, policy: Policy) -> tuple[bytes, StoredAs]:
    """The bytes stored as the original of ``p``, and what they are."""
    if policy == "none":
        return render_png(p.decoded.image), "rendering"
    if policy == "deidentified" and p.format == "dicom":
        return deidentify_dicom(p.upload.data), "deidentified"
    return p.upload.data, "original"
