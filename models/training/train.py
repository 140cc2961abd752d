"""Training a cbmir CNN from scratch on an image-folder data set (``cbmir train``).

Defaults are chosen to work on a new data set without tuning: input size and channels
are read off the images, normalisation is measured on the training split, the number of
epochs follows the data set's size, AdamW with a one-cycle schedule, mild augmentation,
and the epoch with the best validation accuracy is kept (early stopping on a patience).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm import tqdm

from models.checkpoint import save_checkpoint
from models.cnn import CbmirCNN, flops_per_image, set_memory_format
from models.config import ModelConfig
from models.embed import resolve_device
from models.imaging.decode import read_image_file
from models.imaging.errors import ImageDecodeError
from models.preprocess import normalize
from models.training.augment import augment
from models.training.dataset import DatasetIndex, Record, load_prepared, scan_dataset
from models.training.model_card import write_model_card, write_training_curve

log = logging.getLogger(__name__)


class TrainArgs(BaseModel):
    """Resolved training arguments; saved verbatim in the checkpoint's config."""

    data: str
    out: str
    split_csv: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=500)
    image_size: int | None = Field(default=None, ge=16, le=512)
    channels: int | None = Field(default=None, ge=1, le=3)
    batch_size: int | None = Field(default=None, ge=2, le=4096)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    patience: int = Field(default=4, ge=1)
    seed: int = 0
    device: str = "auto"
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    fc_dims: list[int] = Field(default_factory=lambda: [256, 128])
    dropout: float = Field(default=0.2, ge=0, lt=1)
    name: str | None = None
    progress: bool = True


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    config: ModelConfig
    out_dir: Path
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _sample_records(records: list[Record], n: int, seed: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(records), size=min(n, len(records)), replace=False)
    return [records[i] for i in sorted(idx)]


def infer_input_shape(records: list[Record], seed: int = 0) -> tuple[int, int]:
    """(channels, size) from a sample: grey unless any image is in colour; size = the
    median short side rounded to a multiple of 16, between 32 and 128 px (a CPU-friendly cap)."""
    colour = False
    sides: list[int] = []
    for r in _sample_records(records, 64, seed):
        try:
            img = read_image_file(r.path).image
        except (ImageDecodeError, OSError):
            continue
        if img.mode == "RGB":
            arr = np.asarray(img)
            # Grey stored as RGB is still grey: only true colour needs 3 channels.
            colour |= not (np.array_equal(arr[..., 0], arr[..., 1])
                           and np.array_equal(arr[..., 1], arr[..., 2]))
        sides.append(min(img.size))
    if not sides:
        raise ValueError("none of the sampled images could be read")
    size = int(min(128, max(32, 16 * round(float(np.median(sides)) / 16))))
    return (3 if colour else 1), size


def _auto_epochs(n_train: int, batch_size: int) -> int:
    # About 2,000 optimiser steps: enough for MedNIST-sized sets in a few epochs and for
    # small sets (a few thousand images) in a few dozen, capped to bound training time.
    steps = max(1, math.ceil(n_train / batch_size))
    return int(min(40, max(4, round(2000 / steps))))


@torch.no_grad()
def _evaluate(model: CbmirCNN, x: torch.Tensor, y: torch.Tensor, cfg: ModelConfig,
              device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for s in range(0, len(x), 512):
        xb = normalize(x[s : s + 512].to(device), cfg)
        yb = y[s : s + 512].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / max(1, len(x)), correct / max(1, len(x))


def train(args: TrainArgs, dataset: DatasetIndex | None = None) -> TrainResult:
    """Run a whole training and write the checkpoint, curve and model card to ``args.out``."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    ds = dataset or scan_dataset(Path(args.data), Path(args.split_csv) if args.split_csv else None,
                                 seed=args.seed)
    train_recs, val_recs = ds.split("train"), ds.split("val")
    channels, size = infer_input_shape(train_recs, args.seed)
    channels = args.channels or channels
    size = args.image_size or size
    batch_size = args.batch_size or (128 if len(train_recs) >= 5000 else 32)
    epochs = args.epochs or _auto_epochs(len(train_recs), batch_size)
    resolved = args.model_copy(update={"channels": channels, "image_size": size,
                                       "batch_size": batch_size, "epochs": epochs})
    log.info("data: %d train, %d val, %d classes; input %d×%d×%d; %d epochs of batch %d on %s",
             len(train_recs), len(val_recs), len(ds.class_names), channels, size, size, epochs,
             batch_size, device)
    cfg = ModelConfig(
        name=args.name or Path(args.out).name, in_channels=channels, image_size=size,
        class_names=ds.class_names, mean=[0.0] * channels, std=[1.0] * channels,
        widths=args.widths, fc_dims=args.fc_dims, dropout=args.dropout,
        train_args=resolved.model_dump(exclude={"progress"}), data_fingerprint=ds.fingerprint,
    )
    tr = load_prepared(train_recs, cfg, desc="decode train", progress=args.progress)
    va = load_prepared(val_recs, cfg, desc="decode val", progress=args.progress)
    if len(tr.images) == 0 or len(va.images) == 0:
        raise ValueError("no readable images in the train or val split")
    # Normalisation is measured on the training split, so it is part of the model.
    flat = tr.images.reshape(len(tr.images), channels, -1).astype(np.float32) / 255.0
    mean = flat.mean(axis=(0, 2)).tolist()
    std = np.maximum(flat.std(axis=(0, 2)), 1e-3).tolist()
    del flat
    cfg = cfg.model_copy(update={"mean": mean, "std": std})

    model = CbmirCNN.from_config(cfg).to(device)
    if device.type == "cpu":
        set_memory_format(model, True)
    x_tr, y_tr = torch.from_numpy(tr.images), torch.from_numpy(tr.labels)
    x_va, y_va = torch.from_numpy(va.images), torch.from_numpy(va.labels)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(args.seed)
    result = TrainResult(cfg, Path(args.out))
    best_acc, best_loss, best_state = -1.0, math.inf, None
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not args.progress, leave=False, mininterval=1.0)
        for step in bar:
            idx = perm[step * batch_size : (step + 1) * batch_size]
            xb = normalize(x_tr[idx].to(device), cfg)
            xb = augment(xb, gen)
            if device.type == "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_tr[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        val_loss, val_acc = _evaluate(model, x_va, y_va, cfg, device)
        stats = EpochStats(epoch, loss_sum / len(x_tr), correct / len(x_tr), val_loss, val_acc,
                           float(sched.get_last_lr()[0]), time.perf_counter() - te)
        result.history.append(stats)
        improved = val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.0fs%s",
                 epoch, epochs, stats.train_loss, stats.train_acc, val_loss, val_acc, stats.lr,
                 stats.seconds, "  *best" if improved else "")
        if improved:
            best_acc, best_loss, result.best_epoch = val_acc, val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch > epochs // 2 and epoch - result.best_epoch >= args.patience:
            # Only in the annealing half of the one-cycle schedule: at peak learning rate a
            # small validation set swings by several points from epoch to epoch.
            log.info("no validation improvement for %d epochs; stopping early", args.patience)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "val_accuracy": best_acc, "val_loss": best_loss, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "train_seconds": round(result.seconds, 1),
        "train_images": len(x_tr), "val_images": len(x_va), "skipped_files": tr.failed + va.failed
        + ds.skipped, "flops_per_image": flops_per_image(cfg),
    }
    cfg = cfg.model_copy(update={"metrics": metrics})
    out = Path(args.out)
    cfg = save_checkpoint(set_memory_format(model.to("cpu"), False), cfg, out)
    result.config = cfg
    write_training_curve(result.history, out / "training_curve.png")
    write_model_card(cfg, out, [vars(h) for h in result.history])
    log.info("saved %s (best epoch %d, val acc %.4f) in %.0fs", out, result.best_epoch, best_acc,
             result.seconds)
    return result
