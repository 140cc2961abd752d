"""Real DICOM files for the PACS tests: pydicom's bundled files, a seeded synthetic CT
series, and any file re-encoded as JPEG Lossless (imagecodecs' libjpeg-turbo)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-SECRET-42",
           "PatientBirthDate": "19700101"}


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return Path(str(path)).read_bytes()


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_slice(
    study: str, series: str, number: int, *, seed: int = 0, size: int = 64,
    series_description: str = "synthetic", sop: str | None = None,
) -> bytes:
    """One 16-bit CT slice of a synthetic series: a disc whose radius follows the slice
    number, over seeded noise, with patient fields that must never leave the service."""
    rng = np.random.default_rng(seed * 1000 + number)
    yy, xx = np.mgrid[:size, :size]
    radius = size * (0.2 + 0.2 * np.sin(number / 6))
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
    hu = np.where(disc, 40, -1000) + rng.normal(0, 20, (size, size))
    stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    ds = Dataset()
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.Modality, ds.BodyPartExamined = "CT", "CHEST"
    ds.SeriesDescription, ds.InstanceNumber = series_description, number
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return to_bytes(ds)


def ct_series(n: int, *, seed: int = 0, study: str | None = None) -> tuple[str, str, list[bytes]]:
    study = study or generate_uid()
    series = generate_uid()
    return study, series, [ct_slice(study, series, i + 1, seed=seed) for i in range(n)]


def jpeg_lossless(data: bytes, *, predictor: int = 1) -> bytes:
    """The same instance (same UIDs) re-encoded as JPEG Lossless: selection value 1 is
    1.2.840.10008.1.2.4.70, any other predictor 1.2.840.10008.1.2.4.57."""
    import imagecodecs

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    if arr.dtype.kind == "i":
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    bits = int(ds.BitsStored) if arr.dtype.itemsize > 1 else 8
    if arr.dtype.itemsize > 1:
        arr = arr & ((1 << int(ds.BitsAllocated)) - 1)
        bits = int(ds.BitsAllocated) if ds.PixelRepresentation else bits
    frame = imagecodecs.jpeg8_encode(arr, lossless=True, predictor=predictor,
                                     bitspersample=bits)
    ts: UID = JPEGLosslessSV1 if predictor == 1 else JPEGLossless
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def edited_header(data: bytes, **changes: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for k, v in changes.items():
        setattr(ds, k, v)
    return to_bytes(ds)


def with_syntax(data: bytes, ts: str) -> bytes:
    """Re-label an instance as encapsulated in ``ts`` (payload not valid for it): what an
    archive stores happily and this service cannot decode."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def htj2k(data: bytes) -> bytes:
    """The same instance re-encoded as HTJ2K Lossless (1.2.840.10008.1.2.4.201)."""
    import imagecodecs

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    frame = imagecodecs.htj2k_encode(arr)  # lossless by default
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.201")
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)
