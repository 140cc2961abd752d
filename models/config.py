"""The self-describing model configuration stored beside the weights (``config.json``).

Everything needed to rebuild the network and to preprocess an image lives here, so
``load(path)`` needs nothing else (the nanoGPT/timm habit).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class OodConfig(BaseModel):
    """How out-of-distribution queries are told apart (see :mod:`models.ood`).

    Written by calibration (``cbmir calibrate``, or at the end of training) beside the
    weights, which it never touches: the model's fingerprint, and so every index built
    with it, stays valid.
    """

    method: str
    threshold: float = Field(description="a score above it is out of distribution")
    target_flag_rate: float = Field(gt=0, lt=1, description="share of val images flagged")
    val_flagged: float = Field(ge=0, le=1, description="share of val images flagged, measured")
    val_images: int = Field(ge=1)
    fit_images: int = Field(ge=1, description="train images the statistics were fitted on")
    fit_augmented: bool = Field(False, description="half of them augmented copies")
    stats_file: str = "ood.safetensors"
    stats_sha256: str
    data_fingerprint: str = ""


class ModelConfig(BaseModel):
    """Architecture, input contract and provenance of one trained model."""

    format_version: int = FORMAT_VERSION
    arch: Literal["cbmir-cnn", "cbmir-resnet"] = "cbmir-cnn"
    name: str = "cbmir"
    in_channels: int = Field(ge=1, le=3)
    image_size: int = Field(ge=16, le=1024)
    class_names: list[str] = Field(min_length=2)
    mean: list[float]
    std: list[float]
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 128])
    depths: list[int] = Field(default_factory=list)
    """Residual blocks per stage (``cbmir-resnet`` only; one per entry of ``widths``)."""
    stem_convs: int = Field(default=1, ge=1, le=3)
    """3×3 convolutions in the residual stem (``cbmir-resnet``): the first strides, the
    others keep its resolution, before the pool. Checkpoints made before it have one."""
    fc_dims: list[int] = Field(default_factory=lambda: [256, 128])
    dropout: float = 0.2
    train_args: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    weights_sha256: str = ""
    ood: OodConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one value per input channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class names must be unique")
        if not self.fc_dims or not self.widths:
            raise ValueError("widths and fc_dims must be non-empty")
        if self.arch == "cbmir-resnet" and len(self.depths) != len(self.widths):
            raise ValueError("cbmir-resnet needs one entry of depths per entry of widths")
        return self

    @property
    def embedding_dim(self) -> int:
        """Width of the penultimate fully connected layer: the descriptor's dimension."""
        return self.fc_dims[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """Short identity of the weights; the index sidecar records it to refuse a mismatch."""
        return self.weights_sha256[:16]
