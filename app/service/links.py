"""Where a DICOM item can be opened: its WADO-RS URL and a viewer's URL.

``wado_url`` is given for items that came from an archive (``cbmir index --dicomweb``,
``cbmir follow``, ``cbmir listen``, or ``POST /index`` with a ``wado_url`` field). When
``CBMIR_DICOMWEB_URL`` is set, the URL is built on that base (the one the service's
clients can reach), not on the address the import used nor the archive's own
RetrieveURL. ``viewer_url`` is ``CBMIR_VIEWER_URL_TEMPLATE`` with ``{study_uid}``,
``{series_uid}`` and ``{sop_uid}`` filled in; null when unset or for non-DICOM items.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter
from urllib.parse import quote

from app.service.store import DicomFields

PLACEHOLDERS = frozenset({"study_uid", "series_uid", "sop_uid"})


def check_template(template: str) -> str:
    """A viewer URL template names only known placeholders; raises ValueError."""
    try:
        names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"not a URL template: {e}") from None
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; known: "
                         + ", ".join(f"{{{n}}}" for n in sorted(PLACEHOLDERS)))
    if not template.startswith(("http://", "https://", "/")):
        raise ValueError("must be an http(s) URL or a path")
    return template


def instance_path(d: DicomFields) -> str:
    return (f"/studies/{quote(d.study_uid)}/series/{quote(d.series_uid)}"
            f"/instances/{quote(d.sop_uid)}")


@dataclass(frozen=True)
class Links:
    dicomweb_url: str | None = None
    viewer_template: str | None = None

    def wado_url(self, dicom: DicomFields | None, stored: str | None) -> str | None:
        if dicom is None or stored is None:
            return stored
        if self.dicomweb_url:
            return self.dicomweb_url.rstrip("/") + instance_path(dicom)
        return stored

    def viewer_url(self, dicom: DicomFields | None) -> str | None:
        if dicom is None or not self.viewer_template:
            return None
        return self.viewer_template.format(
            study_uid=quote(dicom.study_uid), series_uid=quote(dicom.series_uid),
            sop_uid=quote(dicom.sop_uid))
