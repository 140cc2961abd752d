"""Evaluation figures (PNG, matplotlib's Agg backend: no display needed on a server)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np


def _pyplot() -> ModuleType:
    # Imported late and forced to Agg so importing this module never opens a window
    # or fails on a headless machine.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Row-normalised colours (recall per true class) with the raw counts written in."""
    plt = _pyplot()
    k = len(class_names)
    counts = np.asarray(cm, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), list(class_names))
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test split)")
    if k <= 30:  # beyond that the numbers are unreadable anyway
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if frac[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str = "Interpolated precision-recall (mean over queries)",
) -> None:
    """One line per scope; ``curves`` maps a legend label to (recall, precision) points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for label, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=label, linewidth=1.8)
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
