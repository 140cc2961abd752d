"""The embedder: a loaded model that turns images into descriptors and class probabilities."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.config import ModelConfig
from models.net import RetrievalNet, set_memory_format
from models.onnx_runner import OnnxRunner, export
from models.preprocess import normalize, prepare

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


@dataclass(frozen=True)
class Embedding:
    """Descriptors (N, D), L2-normalised, and class probabilities (N, K), both float32."""

    vectors: np.ndarray
    probabilities: np.ndarray


class _EmbedHead(torch.nn.Module):
    """``uint8`` batch → (embeddings, probabilities): normalisation and the network in one
    forward, so it can be traced whole. One call per batch also means one release of the
    GIL instead of one per tensor operation, which matters when the service's batcher
    thread competes with the event loop and decoding threads."""

    def __init__(self, model: RetrievalNet, cfg: ModelConfig, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(x, self.cfg)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.embed_and_classify(x)


def _example(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, 256, (2, cfg.in_channels, cfg.image_size, cfg.image_size),
                         generator=torch.Generator().manual_seed(0)).to(torch.uint8)


def _freeze(head: _EmbedHead, cfg: ModelConfig) -> torch.nn.Module:
    """Trace and freeze for CPU inference; fall back to eager if tracing is unavailable."""
    example = _example(cfg)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(head.eval(), example))
            ref = head(example)
            got = frozen(example)
        if all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ref, got, strict=True)):
            return frozen
        log.warning("frozen model disagrees with eager model; using eager")
    except Exception as e:  # tracing is an optimisation only; never fatal
        log.warning("could not freeze the model for CPU inference (%s); using eager", e)
    return head


@dataclass
class Embedder:
    model: RetrievalNet
    config: ModelConfig
    device: torch.device
    runner: torch.nn.Module | None = None
    onnx: OnnxRunner | None = None  # CPU: ONNX Runtime, when it loads and agrees

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto", *, onnx: bool = True
             ) -> Embedder:
        dev = resolve_device(device)
        model, cfg = load_checkpoint(Path(model_dir), dev)
        runner: torch.nn.Module = _EmbedHead(model, cfg, channels_last=False)
        if dev.type == "cpu" and onnx:
            # 1.5-3x the TorchScript trace at batch 1-32 on 2 cores (bench/RESULTS.md).
            ort = export(runner.eval(), _example(cfg), torch.get_num_threads())
            if ort is not None:
                log.info("loaded model %s (%d classes, dim %d) on cpu, ONNX Runtime",
                         cfg.name, cfg.num_classes, cfg.embedding_dim)
                return cls(model, cfg, dev, runner, ort)
        if dev.type == "cpu":
            # channels_last lets oneDNN pick its fastest convolution kernels on CPU, and a
            # frozen trace folds BatchNorm into the convolutions and fuses conv+ReLU:
            # about 1.5x the eager throughput on 2 cores (see bench/RESULTS.md).
            set_memory_format(model, True)
            runner = _freeze(_EmbedHead(model, cfg, channels_last=True), cfg)
        log.info("loaded model %s (%d classes, dim %d) on %s", cfg.name, cfg.num_classes,
                 cfg.embedding_dim, dev)
        return cls(model, cfg, dev, runner)

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    def prepare(self, image: Image.Image) -> np.ndarray:
        return prepare(image, self.config)

    @torch.inference_mode()
    def embed_prepared(self, batch: np.ndarray, batch_size: int | None = None) -> Embedding:
        """``uint8`` (N, C, S, S) arrays from :func:`models.preprocess.prepare` → embeddings.

        Work is cut into chunks of ``batch_size`` images: 32 on CPU, where larger chunks
        fall out of cache and run slower (bench/RESULTS.md: 3,246 img/s at 32 against
        1,849 at 256 on 2 cores), 256 on a GPU.
        """
        step = batch_size or (32 if self.device.type == "cpu" else 256)
        n = len(batch)
        vecs = np.empty((n, self.embedding_dim), dtype=np.float32)
        probs = np.empty((n, self.config.num_classes), dtype=np.float32)
        runner = self.runner if self.runner is not None else _EmbedHead(
            self.model, self.config, channels_last=False)
        for start in range(0, n, step):
            if self.onnx is not None:
                emb_np, p_np = self.onnx(np.ascontiguousarray(batch[start : start + step]))
                vecs[start : start + len(emb_np)] = emb_np
                probs[start : start + len(emb_np)] = p_np
                continue
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + step]))
            emb, p = runner(chunk.to(self.device))
            vecs[start : start + len(chunk)] = emb.float().cpu().numpy()
            probs[start : start + len(chunk)] = p.float().cpu().numpy()
        return Embedding(vecs, probs)

    def embed_images(self, images: Sequence[Image.Image]) -> Embedding:
        if not images:
            return Embedding(
                np.empty((0, self.embedding_dim), np.float32),
                np.empty((0, self.config.num_classes), np.float32),
            )
        return self.embed_prepared(np.stack([self.prepare(im) for im in images]))
