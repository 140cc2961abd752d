"""Embedder throughput by batch size: the runner the service uses (ONNX Runtime when it
loads, else the frozen TorchScript trace; "frozen" in the keys), the TorchScript trace and
eager PyTorch, against the matmul ceiling."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from bench.common import median, thread_limit
from models.arch import flops_per_image
from models.embed import Embedder
from models.imaging.decode import decode_image

log = logging.getLogger(__name__)


def prepare_all(embedder: Embedder, blobs: list[bytes]) -> np.ndarray:
    """Decode + preprocess, as the service does: uint8 (N, C, S, S)."""
    return np.stack([embedder.prepare(decode_image(b).image) for b in blobs])


def _images_per_s(embedder: Embedder, images: np.ndarray, batch: int, min_images: int,
                  repeats: int, max_s: float, warmup: int = 2) -> float:
    """Median images/s of embedding ``min_images`` (at least one batch) in ``batch``-sized calls."""
    n = max(batch, min_images)
    reps = np.resize(images, (n, *images.shape[1:]))  # cycles the real images
    for _ in range(warmup):  # TorchScript's profiling runs, oneDNN primitive creation
        embedder.embed_prepared(reps[:batch], batch_size=batch)
    rates = []
    deadline = time.perf_counter() + max_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = 0
        for start in range(0, n, batch):
            embedder.embed_prepared(reps[start : start + batch], batch_size=batch)
            done += len(reps[start : start + batch])
            if time.perf_counter() > deadline:
                break  # a slow point is cut short, not skipped: the rate stays valid
        rates.append(done / (time.perf_counter() - t0))
        if time.perf_counter() > deadline:
            break
    return median(rates)


def bench_embedder(embedder: Embedder, images: np.ndarray, batch_sizes: list[int],
                   min_images: int, repeats: int, matmul_gflops: float | None,
                   max_s_per_point: float = 10.0, warmup: int = 2,
                   torchscript: Embedder | None = None, one_thread: Embedder | None = None
                   ) -> dict[str, Any]:
    """``torchscript``: the same model loaded without ONNX Runtime; ``one_thread``: the
    served runner loaded on one thread (an ONNX Runtime session keeps its thread count)."""
    flops = flops_per_image(embedder.config)
    # Same preprocessing and normalisation, only the forward differs: runner=None and
    # onnx=None make embed_prepared call the eager model's embed_and_classify.
    eager = dataclasses.replace(embedder, runner=None, onnx=None)
    # Embedder.load falls back to eager when tracing fails: say which one "frozen" was.
    frozen_is_traced = isinstance(embedder.runner, torch.jit.ScriptModule)
    runner = "onnxruntime" if embedder.onnx is not None else (
        "torchscript" if frozen_is_traced else "eager")
    variants = [("frozen", embedder), ("eager", eager)]
    if torchscript is not None and embedder.onnx is not None:
        variants.append(("torchscript", torchscript))
    rows = []
    for b in batch_sizes:
        row: dict[str, Any] = {"batch": b}
        for name, emb in variants:
            rate = _images_per_s(emb, images, b, min_images, repeats, max_s_per_point, warmup)
            row[f"{name}_img_s"] = rate
            row[f"{name}_gflops"] = rate * flops / 1e9
        # One thread: on a busy 2-core machine OpenMP's fork/join waits for a descheduled
        # second thread, which can cost more than the parallelism gains.
        with thread_limit(torch_threads=1):
            row["frozen_1thread_img_s"] = _images_per_s(one_thread or embedder, images, b,
                                                        min_images, repeats, max_s_per_point,
                                                        warmup)
        row["frozen_over_eager"] = row["frozen_img_s"] / row["eager_img_s"]
        if matmul_gflops:
            row["frozen_fraction_of_matmul"] = row["frozen_gflops"] / matmul_gflops
        log.info("embedder batch %3d: frozen %6.0f img/s, eager %6.0f img/s (x%.2f), frozen on "
                 "1 thread %6.0f img/s", b, row["frozen_img_s"], row["eager_img_s"],
                 row["frozen_over_eager"], row["frozen_1thread_img_s"])
        rows.append(row)
    cfg = embedder.config
    return {
        "model": {"name": cfg.name, "fingerprint": cfg.fingerprint, "in_channels": cfg.in_channels,
                  "image_size": cfg.image_size, "widths": cfg.widths, "fc_dims": cfg.fc_dims,
                  "embedding_dim": cfg.embedding_dim, "classes": cfg.num_classes},
        "runner_is_frozen_torchscript": frozen_is_traced and embedder.onnx is None,
        "runner": runner,
        "flops_per_image": flops,
        "matmul_gflops": matmul_gflops,
        "torch_threads": torch.get_num_threads(),
        "by_batch": rows,
    }
