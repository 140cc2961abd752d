"""Response bodies (request bodies are multipart forms, declared on the routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.service.store import DicomFields


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["file 1 ('notes.png'): not a supported image"])


class OodInfo(BaseModel):
    method: str | None = Field(description="null: the model has no OOD calibration")
    threshold: float | None
    policy: Literal["flag", "reject", "off"]


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    device: str
    embedding_dim: int
    ood: OodInfo


class IndexInfo(BaseModel):
    backend: Literal["faiss", "pgvector"] = "faiss"
    size: int
    type: str


class BatcherInfo(BaseModel):
    alive: bool = Field(description="the model's worker thread is running")
    restarts: int = Field(description="times it died and was started again")
    queued_images: int


class SnapshotInfo(BaseModel):
    age_s: float = Field(description="seconds since the published index snapshot was taken")
    failures: int = Field(description="failed snapshots since start")
    last_error: str | None = Field(None, description="why the latest attempt failed, if it did")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str] = Field(default_factory=list, description="why it is degraded")
    model: ModelInfo
    index: IndexInfo
    batcher: BatcherInfo
    snapshot: SnapshotInfo


class StartingResponse(BaseModel):
    status: Literal["starting", "failed"]
    detail: str | None = None


class IndexedItem(BaseModel):
    id: int
    label: str
    label_source: Literal["given", "predicted"]
    duplicate: bool = Field(description="the same bytes were already stored under this id")
    in_distribution: bool | None = Field(
        None, description="like the model's training images; null when not checked")


class IndexResponse(BaseModel):
    items: list[IndexedItem]


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]
    in_distribution: bool | None = Field(
        None, description="false: unlike the model's training images, the label means little; "
        "null: not checked (CBMIR_OOD_POLICY=off, or the model has no calibration)")
    ood_score: float | None = Field(None, description="higher = more unusual; null: unchecked")
    ood_threshold: float | None = Field(None, description="a score above it is OOD")


class DicomInfo(BaseModel):
    """A DICOM item's identity and the fields a person looks for first (no patient field)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    instance_number: int | None = None

    @classmethod
    def of(cls, d: DicomFields | None) -> DicomInfo | None:
        if d is None:
            return None
        return cls(study_uid=d.study_uid, series_uid=d.series_uid, sop_uid=d.sop_uid,
                   modality=d.modality, body_part=d.body_part,
                   series_description=d.series_description, instance_number=d.instance_number)


class SearchHit(BaseModel):
    id: int
    score: float = Field(description="cosine similarity of the descriptors")
    label: str
    image_url: str
    metadata: dict[str, Any]
    label_source: Literal["given", "predicted"]
    dicom: DicomInfo | None = Field(None, description="null for non-DICOM images")
    wado_url: str | None = Field(None, description="WADO-RS URL of the instance, when it "
                                 "came from an archive")
    viewer_url: str | None = Field(None, description="from CBMIR_VIEWER_URL_TEMPLATE; null "
                                   "when unset or not DICOM")
    series_hits: int | None = Field(None, description="group_by=series: how many of the "
                                    "series' slices are among the candidates")


class SearchResponse(BaseModel):
    prediction: Prediction
    scope: Literal["predicted", "all", "label"]
    results: list[SearchHit]
    warnings: list[str] = Field(default_factory=list,
                                description="one-line notes on this answer; empty when none")
    took_ms: float


class ImageItem(BaseModel):
    """A stored image: the fields of a search hit, without the score."""

    id: int
    label: str
    image_url: str = Field(description="its PNG rendering; /thumbnail after it for a small one")
    metadata: dict[str, Any]
    label_source: Literal["given", "predicted"]
    in_distribution: bool | None = Field(
        None, description="the OOD verdict when it was stored; null when not checked")
    dicom: DicomInfo | None = Field(None, description="null for non-DICOM images")
    wado_url: str | None = None
    viewer_url: str | None = None


class ImageListResponse(BaseModel):
    items: list[ImageItem] = Field(description="newest first")
    total: int = Field(description="stored images matching the filters, all pages together")
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


class DeletedResponse(BaseModel):
    deleted: int = Field(description="stored images deleted")


class RelabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=200, description="one of the model's classes",
                       examples=["Hand"])


# What an upload route can answer besides 200, declared once so the OpenAPI schema (and
# the Schemathesis check against it) lists the same errors for /search and /index.
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 507)
}
