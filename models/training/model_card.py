"""The human-readable side of a checkpoint: training curve PNG and model card (README.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from models.arch import flops_per_image
from models.config import ModelConfig


class _Epoch(Protocol):
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float


def write_training_curve(history: Sequence[_Epoch], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h.epoch for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h.train_loss for h in history], "o-", label="train")
    a.plot(ep, [h.val_loss for h in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(ep, [h.train_acc for h in history], "o-", label="train")
    b.plot(ep, [h.val_acc for h in history], "o-", label="val")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _command(cfg: ModelConfig) -> str:
    ta = cfg.train_args
    parts = ["cbmir train", f"--data {ta.get('data')}", f"--out {ta.get('out')}"]
    if ta.get("split_csv"):
        parts.insert(2, f"--split-csv {ta['split_csv']}")
    return " ".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _measured(cfg: ModelConfig) -> list[str]:
    """What the recipe measured on the data and what it chose by it."""
    m, ta, out = cfg.metrics, cfg.train_args, []
    if "rendering_shortcut" in m:
        out.append(f"- rendering shortcut (kappa of intensity histograms alone) "
                   f"{m['rendering_shortcut']}: rendering augmentation at strength "
                   f"{ta.get('augment_strength')}")
    if ta.get("symmetries"):
        out.append(f"- mirror images and quarter turns in the augmentation: "
                   f"{', '.join(ta['symmetries'])}")
    return out


def write_model_card(cfg: ModelConfig, out_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    m = cfg.metrics
    lines = [
        f"# Model card: {cfg.name}",
        "",
        "A classification network trained from scratch by `cbmir train` (Qayyum et al. 2017):",
        "its L2-normalised penultimate fully connected layer is the image descriptor used for",
        "retrieval, and its prediction restricts search to the predicted class.",
        "",
        "## Command",
        "```",
        _command(cfg),
        "```",
        "",
        "## Model",
        f"- input: {cfg.in_channels} channel(s), {cfg.image_size}×{cfg.image_size} px, "
        f"mean {[round(x, 4) for x in cfg.mean]}, std {[round(x, 4) for x in cfg.std]}",
        f"- classes ({cfg.num_classes}, in output order): {', '.join(cfg.class_names)}",
        f"- architecture `{cfg.arch}`: widths {cfg.widths}"
        + (f", blocks per stage {cfg.depths}" if cfg.depths else "")
        + f", fully connected {cfg.fc_dims}; embedding dim {cfg.embedding_dim}",
        f"- {flops_per_image(cfg) / 1e6:.1f} MFLOP per image; weights sha256 "
        f"`{cfg.weights_sha256[:16]}…`",
        f"- training data fingerprint `{cfg.data_fingerprint}`",
        "",
        "## Training",
        f"- best epoch {m.get('best_epoch')} of {m.get('epochs_run')} run; validation accuracy "
        f"{_fmt(m.get('val_accuracy'))}; wall-clock {m.get('train_seconds')} s "
        f"({m.get('train_images')} train / {m.get('val_images')} val images, "
        f"{m.get('skipped_files')} files skipped)",
        "- resolved arguments: `" + json.dumps(cfg.train_args, sort_keys=True) + "`",
        *_measured(cfg),
        "",
        "| epoch | train loss | train acc | val loss | val acc | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.4f} | "
            f"{h['val_loss']:.4f} | {h['val_acc']:.4f} | {h['seconds']:.0f} |"
        )
    lines += ["", "![training curve](training_curve.png)", ""]
    ev = m.get("evaluation")
    if isinstance(ev, dict) and ev.get("markdown"):
        lines += ["## Evaluation", "", str(ev["markdown"]).strip(), ""]
    (out_dir / "README.md").write_text("\n".join(lines))
