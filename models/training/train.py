"""Training a cbmir network from scratch on an image-folder data set (``cbmir train``).

Defaults work on a new data set without tuning and adapt only to what can be measured on
any data set (:mod:`models.training.recipe`): input size and channels are read off the
images, normalisation is measured on the training split, the length of training is a fixed
budget of training samples, sampling is class-balanced when the classes are skewed, and
the rendering augmentation is as strong as the data set's measured rendering shortcut.
The recipe: a small residual network (:mod:`models.resnet`), AdamW with a one-cycle
schedule, label smoothing, the rendering augmentation of :mod:`models.training.augment`,
an exponential moving average of the weights (:mod:`models.training.ema`), and the epoch
of the schedule's annealing half whose averaged weights have the best validation accuracy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm import tqdm

from models.arch import build_model, flops_per_image
from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.embed import resolve_device
from models.net import RetrievalNet, set_memory_format
from models.preprocess import normalize, standardize
from models.training import recipe
from models.training.augment import augment, make_overlays, recipe_spec
from models.training.calibrate import calibrate_prepared
from models.training.dataset import DatasetIndex, load_prepared, scan_dataset
from models.training.ema import WeightEma
from models.training.model_card import write_model_card, write_training_curve

log = logging.getLogger(__name__)

infer_input_shape = recipe.infer_input_shape  # re-exported: callers and tests use it here


class TrainArgs(BaseModel):
    """Resolved training arguments; saved verbatim in the checkpoint's config."""

    data: str
    out: str
    split_csv: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=1000)
    image_size: int | None = Field(default=None, ge=16, le=512)
    channels: int | None = Field(default=None, ge=1, le=3)
    batch_size: int | None = Field(default=None, ge=2, le=4096)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    patience: int | None = Field(default=None, ge=1)
    """Stop after this many epochs of the annealing half without a better validation
    accuracy; ``None`` (the default) runs the whole schedule (README: stopping early had
    cut the small sets' best epochs off)."""
    seed: int = 0
    device: str = "auto"
    arch: Literal["cbmir-resnet", "cbmir-cnn"] = "cbmir-resnet"
    widths: list[int] | None = None
    depths: list[int] | None = None
    stem_convs: int | None = Field(default=None, ge=1, le=3)
    fc_dims: list[int] | None = None
    dropout: float = Field(default=0.2, ge=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    ema_decay: float = Field(default=0.998, ge=0, lt=1)
    sample_budget: int = Field(default=200_000, ge=1)
    balance: Literal["auto", "on", "off"] = "auto"
    balance_rule: Literal["even", "sqrt"] = "even"
    augment: bool = True
    augment_strength: float | None = Field(default=None, ge=0, le=3)
    symmetries: list[Literal["flip_lr", "flip_ud", "rot90"]] = Field(default_factory=list)
    """Mirror images and quarter turns in the augmentation: none by default. Radiology has
    a side (a chest's heart, a hand), and on the four sets without one that were measured
    (BUSI, colon histology, dermoscopy, pbc-sample) they cost accuracy (README)."""
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


@torch.no_grad()
def _evaluate(model: RetrievalNet, x: torch.Tensor, y: torch.Tensor, cfg: ModelConfig,
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


def _resolve(args: TrainArgs, ds: DatasetIndex, labels: np.ndarray) -> TrainArgs:
    """Fill every default that depends on the data, so the saved arguments are complete."""
    train_recs = ds.split("train")
    channels, size = recipe.infer_input_shape(train_recs, args.seed)
    batch_size = args.batch_size or (128 if len(train_recs) >= 5000 else 32)
    size = args.image_size or size
    epochs = args.epochs or recipe.auto_epochs(len(train_recs), args.sample_budget)
    cnn = args.arch == "cbmir-cnn"
    widths = args.widths or (recipe.CNN_WIDTHS if cnn else recipe.RESNET_WIDTHS)
    return args.model_copy(update={
        "channels": args.channels or channels, "image_size": size,
        "batch_size": batch_size, "epochs": epochs,
        "widths": widths, "depths": [] if cnn else (args.depths or [1] * len(widths)),
        "fc_dims": args.fc_dims or ([256, recipe.EMBEDDING_DIM] if cnn
                                    else [recipe.EMBEDDING_DIM]),
        "balance": "on" if recipe.should_balance(labels, args.balance) else "off",
        "stem_convs": args.stem_convs or (recipe.stem_convs(size) if not cnn else 1),
    })


def _measure_normalisation(images: np.ndarray, channels: int) -> tuple[list[float], list[float]]:
    flat = images.reshape(len(images), channels, -1).astype(np.float32) / 255.0
    return flat.mean(axis=(0, 2)).tolist(), np.maximum(flat.std(axis=(0, 2)), 1e-3).tolist()


def train(args: TrainArgs, dataset: DatasetIndex | None = None) -> TrainResult:
    """Run a whole training and write the checkpoint, curve and model card to ``args.out``."""
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    ds = dataset or scan_dataset(Path(args.data), Path(args.split_csv) if args.split_csv else None,
                                 seed=args.seed)
    train_recs, val_recs = ds.split("train"), ds.split("val")
    index = {name: i for i, name in enumerate(ds.class_names)}
    args = _resolve(args, ds, np.array([index[r.label] for r in train_recs]))
    assert args.channels and args.image_size and args.batch_size and args.epochs
    assert args.widths and args.fc_dims and args.depths is not None
    channels, size = args.channels, args.image_size
    batch_size, epochs, patience = args.batch_size, args.epochs, args.patience
    log.info("data: %d train, %d val, %d classes; input %d×%d×%d; %s; %d epochs of batch %d "
             "on %s; balanced sampling %s", len(train_recs), len(val_recs), len(ds.class_names),
             channels, size, size, args.arch, epochs, batch_size, device, args.balance)
    cfg = ModelConfig(
        name=args.name or Path(args.out).name, arch=args.arch, in_channels=channels,
        image_size=size, class_names=ds.class_names, mean=[0.0] * channels, std=[1.0] * channels,
        widths=args.widths, depths=args.depths or [], stem_convs=args.stem_convs or 1,
        fc_dims=args.fc_dims, dropout=args.dropout,
        train_args=args.model_dump(exclude={"progress"}), data_fingerprint=ds.fingerprint,
    )
    tr = load_prepared(train_recs, cfg, desc="decode train", progress=args.progress)
    va = load_prepared(val_recs, cfg, desc="decode val", progress=args.progress)
    if len(tr.images) == 0 or len(va.images) == 0:
        raise ValueError("no readable images in the train or val split")
    # Normalisation is measured on the training split, so it is part of the model.
    mean, std = _measure_normalisation(tr.images, channels)
    shortcut = recipe.rendering_shortcut(tr.images, tr.labels, va.images, va.labels)
    if args.augment_strength is None:
        args = args.model_copy(update={"augment_strength": recipe.auto_augment_strength(shortcut)})
    log.info("rendering shortcut (kappa of intensity histograms alone) %.2f: rendering "
             "augmentation at strength %.2f", shortcut, args.augment_strength)
    cfg = cfg.model_copy(update={"mean": mean, "std": std,
                                 "train_args": args.model_dump(exclude={"progress"})})

    model = build_model(cfg).to(device)
    if device.type == "cpu":
        set_memory_format(model, True)
    ema = WeightEma(model, args.ema_decay)
    x_tr, y_tr = torch.from_numpy(tr.images), torch.from_numpy(tr.labels)
    x_va, y_va = torch.from_numpy(va.images), torch.from_numpy(va.labels)
    steps = recipe.steps_per_epoch(len(x_tr), batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=epochs * steps, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(args.seed)
    weights = (torch.from_numpy(recipe.sample_weights(tr.labels, args.balance_rule))
               if args.balance == "on" else None)
    spec = recipe_spec(args.augment_strength or 0.0, args.symmetries)
    overlays = make_overlays(size, seed=args.seed)
    result = TrainResult(cfg, Path(args.out))
    best_acc, best_loss, best_state = -1.0, math.inf, None
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        perm = (torch.multinomial(weights, len(x_tr), replacement=True, generator=gen)
                if weights is not None else torch.randperm(len(x_tr), generator=gen))
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not args.progress, leave=False, mininterval=1.0)
        for step in bar:
            idx = perm[step * batch_size : (step + 1) * batch_size]
            xb = x_tr[idx].to(device).to(torch.float32) / 255.0
            if args.augment:
                xb = augment(xb, gen, spec, overlays)
            xb = standardize(xb, cfg)
            if device.type == "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_tr[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update(model)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        val_loss, val_acc = _evaluate(ema.model, x_va, y_va, cfg, device)
        stats = EpochStats(epoch, loss_sum / len(x_tr), correct / len(x_tr), val_loss, val_acc,
                           float(sched.get_last_lr()[0]), time.perf_counter() - te)
        result.history.append(stats)
        # Only epochs of the annealing half compete: at peak learning rate a small
        # validation set swings by several points, and a lucky early epoch would stop
        # a run whose averaged weights were about to become far better.
        improved = epoch > epochs // 2 and (
            val_acc > best_acc or (val_acc == best_acc and val_loss <= best_loss))
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.0fs%s",
                 epoch, epochs, stats.train_loss, stats.train_acc, val_loss, val_acc, stats.lr,
                 stats.seconds, "  *best" if improved else "")
        if improved:
            best_acc, best_loss, result.best_epoch = val_acc, val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in ema.model.state_dict().items()}
        elif patience and result.best_epoch and epoch - result.best_epoch >= patience:
            log.info("no validation improvement for %d epochs; stopping early", patience)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "val_accuracy": best_acc, "val_loss": best_loss, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "train_seconds": round(result.seconds, 1),
        "train_images": len(x_tr), "val_images": len(x_va), "skipped_files": tr.failed + va.failed
        + ds.skipped, "flops_per_image": flops_per_image(cfg),
        "rendering_shortcut": round(shortcut, 4),
    }
    cfg = cfg.model_copy(update={"metrics": metrics})
    out = Path(args.out)
    cfg = save_checkpoint(set_memory_format(model.to("cpu"), False), cfg, out)
    result.config = cfg
    write_training_curve(result.history, out / "training_curve.png")
    write_model_card(cfg, out, [vars(h) for h in result.history])
    # The OOD score is fitted on the same decoded train and val images (models/ood.py).
    result.config = calibrate_prepared(out, tr, va, device=args.device,
                                       data_fingerprint=ds.fingerprint, progress=args.progress)
    log.info("saved %s (best epoch %d, val acc %.4f) in %.0fs", out, result.best_epoch, best_acc,
             result.seconds)
    return result
