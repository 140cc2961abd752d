"""Service settings: one pydantic-settings class, read from ``CBMIR_*`` environment variables.

:func:`load_settings` is what the CLI calls: it refuses bad values before anything is
loaded and turns every problem into a one-line ``ValueError`` naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.service.faults import Faults
from models import DEFAULT_MODEL_DIR
from models.config import CONFIG_FILE, WEIGHTS_FILE

ENV_PREFIX = "CBMIR_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=(), frozen=True
    )

    model_dir: Path = DEFAULT_MODEL_DIR
    data_dir: Path = Path("./var")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    api_key: SecretStr | None = None
    api_key_for_reads: bool = False
    max_upload_mb: float = Field(20.0, gt=0)
    max_files: int = Field(64, gt=0)
    seed_demo: bool = True
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    approx_min_size: int = Field(20_000, gt=0)
    batch_max_size: int = Field(64, gt=0)
    batch_wait_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(256, gt=0)
    snapshot_every: int = Field(500, gt=0)
    snapshot_seconds: float = Field(30.0, gt=0)
    # NoDecode: accept "https://a,https://b" as well as a JSON list.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # What to do with an image unlike the model's training images (app.service.ood).
    ood_policy: Literal["flag", "reject", "off"] = "flag"
    # Memory all image decodes in progress may hold together (app.service.decoding).
    decode_memory_mb: float = Field(512.0, gt=0)
    # Images with more pixels are reduced on read; 0: (32 x the model's input side)^2.
    decode_pixel_cap: int = Field(0, ge=0)
    # One log line per request (uvicorn's access log); the metrics count requests anyway.
    access_log: bool = False
    # How often the interpreter hands the GIL between threads (sys.setswitchinterval).
    switch_interval_ms: float = Field(5.0, gt=0, le=100)
    # Intra-op threads for the CNN on CPU. One by default: the service already runs
    # decoding, the event loop and the forward pass side by side, and a 2-thread OpenMP
    # team then spins waiting for a core that is busy elsewhere (bench/RESULTS.md: same
    # throughput at 16 clients for 25-45 % less CPU per request, p99 at 1 client 3x lower).
    torch_threads: int = Field(1, ge=1, le=256)
    # The shared backend (app.service.pg): rows, originals and vectors in PostgreSQL with
    # pgvector, for any number of replicas. Unset: SQLite + FAISS under DATA_DIR.
    database_url: SecretStr | None = None
    # A streaming standby for the vector searches (rows still come from the primary).
    # Such searches may lag the primary's writes: they give up read-your-writes.
    database_read_url: SecretStr | None = None
    pg_index: Literal["exact", "hnsw"] = "exact"
    pg_ef_search: int = Field(100, ge=1, le=1000)
    pg_pool_size: int = Field(10, ge=1, le=1000)
    # How long a request waits for a database connection before answering 503.
    pg_timeout_s: float = Field(5.0, gt=0)
    # The archive (issue 12): the DICOMweb base given out in wado_url, a viewer URL
    # template ({study_uid}, {series_uid}, {sop_uid}), and what is kept of DICOM uploads.
    dicomweb_url: str | None = None
    viewer_url_template: str | None = None
    store_originals: Literal["deidentified", "original", "none"] = "deidentified"
    # Set by `cbmir serve --workers N` (N > 1, embedded backend) in its workers' environment,
    # never by hand: the worker is one of N processes on this data dir (app.service.workers).
    supervised_workers: int = Field(1, ge=1)
    # Test only, never set in production: fault points to arm, "point:action,..." (see
    # app.service.faults). Empty by default: nothing is armed.
    test_faults: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("database_url", "database_read_url", mode="before")
    @classmethod
    def _postgres_url(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        text = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        if not text.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, v: Any) -> Any:
        # CBMIR_API_KEY= (set but empty) must not mean "the key is the empty string".
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    @field_validator("cors_origins", "test_faults", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return v

    @field_validator("test_faults")
    @classmethod
    def _known_faults(cls, v: list[str]) -> list[str]:
        Faults.parse(v)  # an unknown point or action is refused at start
        return v

    @field_validator("dicomweb_url", "viewer_url_template", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("dicomweb_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @field_validator("viewer_url_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        from app.service.links import check_template

        return check_template(v) if v else v

    @field_validator("store_originals", mode="before")
    @classmethod
    def _lower_store(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("ood_policy", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def shared_backend(self) -> bool:
        """Rows and vectors in PostgreSQL (``CBMIR_DATABASE_URL``), not under DATA_DIR."""
        return self.database_url is not None

    @property
    def embedded_workers(self) -> bool:
        """One of several ``cbmir serve --workers N`` processes on one data dir."""
        return self.supervised_workers > 1 and not self.shared_backend

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"


class ClientSettings(BaseSettings):
    """What the archive commands need when they send to a running service (``--to``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    api_key: SecretStr | None = None
    data_dir: Path = Path("./var")  # where `cbmir follow` and `listen` keep state by default
    dicomweb_url: str | None = None  # `cbmir listen`: the wado_url base of pushed instances

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, v: Any) -> Any:
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = err["loc"][0] if err["loc"] else ""
    name = f"{ENV_PREFIX}{str(loc).upper()}"
    return f"invalid {name}: {err['msg']}"


def check_model_dir(model_dir: Path) -> None:
    """The model directory must hold a checkpoint; raises a one-line ``ValueError``."""
    if not model_dir.is_dir():
        raise ValueError(f"{ENV_PREFIX}MODEL_DIR {model_dir} is not a directory")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise ValueError(f"{ENV_PREFIX}MODEL_DIR {model_dir} has no {name}")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``overrides`` win), validated; one-line errors."""
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise ValueError(_one_line(e)) from None
    except ValueError as e:  # e.g. malformed JSON in CBMIR_CORS_ORIGINS
        raise ValueError(f"invalid settings: {str(e).splitlines()[0]}") from None
    check_model_dir(settings.model_dir)
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise ValueError(f"{ENV_PREFIX}DATA_DIR {settings.data_dir} is not a directory")
    return settings
