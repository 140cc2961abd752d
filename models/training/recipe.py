"""The default recipe of ``cbmir train``: every choice that adapts to a data set.

Only what can be measured on any data set is used: its size, its classes' counts, and its
images' channels and sizes. Nothing here knows any particular data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from models.imaging.decode import read_image_file
from models.imaging.errors import ImageDecodeError
from models.resnet import stem_reduction
from models.training.dataset import Record

RESNET_WIDTHS = [16, 32, 64, 128]
CNN_WIDTHS = [16, 32, 64, 128]
EMBEDDING_DIM = 128
MAX_EPOCHS = 300
MIN_EPOCHS = 8
"""Floor on passes for large sets: at 4 (the sample budget alone, on MedNIST's 47,000
training images) the one-cycle schedule ends before the model has settled — MedNIST test
0.9946 at 4 epochs, 0.9966 at 8 (README). Large sets therefore take longer than the
budget: training time grows with the set from about 25,000 images up (MedNIST: 1,225 s of
CPU, against 607 s at 4 epochs)."""
SKEW_FOR_BALANCE = 3.0
"""Largest over smallest class count from which training samples classes evenly."""


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


def auto_epochs(n_train: int, sample_budget: int) -> int:
    """Epochs that show the network about ``sample_budget`` augmented images.

    A fixed budget of samples rather than of epochs: a data set of a few hundred images
    needs many passes (each pass is a new rendering of every image), one of tens of
    thousands a few. The budget is the same at every input size: the residual network's
    cost per image is near-constant from 64 to 128 px (:func:`models.resnet.stem_reduction`).
    Until measured otherwise, 128 px inputs got half the samples (augmentation and data
    movement grow with the pixels); with the whole budget, over two seeds, pbc-sample went
    0.961 → 0.970, colon histology 0.868 → 0.875 and dermoscopy 0.661 → 0.779 (BUSI −0.9
    pt, inside its seed spread) at 607–955 s of CPU on one thread, inside the 20 minutes
    a training may take (README). Every set gets at least ``MIN_EPOCHS`` passes.
    """
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(sample_budget / max(1, n_train)))))


def stem_convs(image_size: int) -> int:
    """3×3 convolutions in the residual stem: two where the stem also pools (≥ 96 px).

    There the stem reduces the image 4× before the first residual stage; one strided 3×3
    convolution sees a 3×3 patch of the image before the pool keeps one value in four, so
    fine texture (echo patterns, cell granules, gland margins) is lost before any block
    sees it. A second 3×3 convolution at half resolution (the "deep stem" of He et al.
    2019, Bag of Tricks) widens that to 7×7 for about 20 MFLOP more. Measured on BUSI:
    0.782 → 0.827 test accuracy; pbc-sample 0.9625 either way (README).
    """
    return 2 if stem_reduction(image_size)[1] else 1


def should_balance(labels: Sequence[int] | np.ndarray, mode: str) -> bool:
    """``auto``: balance when the largest class has ``SKEW_FOR_BALANCE``× the smallest."""
    if mode != "auto":
        return mode == "on"
    counts = np.bincount(np.asarray(labels))
    counts = counts[counts > 0]
    return bool(len(counts) > 1 and counts.max() >= SKEW_FOR_BALANCE * counts.min())


def sample_weights(labels: np.ndarray, rule: Literal["even", "sqrt"] = "even") -> np.ndarray:
    """Per-sample weights for class-balanced sampling.

    ``even`` (the default): every class is drawn equally often (inverse frequency).
    ``sqrt``: each class in proportion to the square root of its count, a compromise that
    repeats rare images less (the default before the measurements below). Measured on the
    three skewed sets with one seed each (README, "The recipe on data sets nobody tuned
    it on"): even sampling raised macro F1 on all three (colon histology 0.800 → 0.829,
    BUSI 0.818 → 0.822, dermoscopy 0.478 → 0.581) and accuracy on two; on dermoscopy
    (1:4) it trades accuracy (0.805 → 0.644) for finding the minority class, which is
    what balancing is asked to do.
    """
    counts = np.bincount(labels).astype(np.float64)
    mass = np.sqrt(counts) if rule == "sqrt" else np.ones_like(counts)
    per_class = np.where(counts > 0, mass / np.maximum(counts, 1), 0.0)
    w = per_class[labels]
    return w / w.sum()


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def _histograms(images: np.ndarray, bins: int = 16) -> np.ndarray:
    """Square-rooted per-channel intensity histograms: what an image's rendering alone
    says (window, contrast, colour), with no spatial information."""
    n, c = images.shape[:2]
    flat = images.reshape(n, c, -1) // (256 // bins)
    out = np.zeros((n, c, bins), np.float64)
    for ch in range(c):
        for b in range(bins):
            out[:, ch, b] = (flat[:, ch] == b).mean(1)
    return np.sqrt(out).reshape(n, -1)


def rendering_shortcut(train_images: np.ndarray, train_labels: np.ndarray,
                       val_images: np.ndarray, val_labels: np.ndarray) -> float:
    """How far the classes can be told apart by their intensity histograms alone.

    Cohen's kappa, against chance, of the balanced validation accuracy of a nearest-
    class-centroid classifier on per-image histograms: 0 when the histogram says nothing
    about the class, 1 when it alone classifies every image. A high value means each class
    comes with its own rendering (its own archive, scanner or modality) — a shortcut a
    network learns instead of the anatomy, which then fails on the same anatomy rendered
    another way.
    """
    k = int(max(train_labels.max(), val_labels.max())) + 1
    ft, fv = _histograms(train_images), _histograms(val_images)
    present = [c for c in range(k) if (train_labels == c).any()]
    centroids = np.stack([ft[train_labels == c].mean(0) for c in present])
    nearest = np.asarray(present)[((fv[:, None] - centroids[None]) ** 2).sum(2).argmin(1)]
    recalls = [float((nearest[val_labels == c] == c).mean()) for c in present
               if (val_labels == c).any()]
    chance = 1.0 / len(present)
    return (float(np.mean(recalls)) - chance) / (1.0 - chance)


SHORTCUT_OFF, SHORTCUT_FULL = 0.5, 0.8
"""Rendering augmentation is off below this kappa and at full strength above the second."""


def auto_augment_strength(shortcut: float) -> float:
    """Strength of the rendering augmentation for a data set's measured shortcut.

    Rendering changes cost accuracy where the rendering carries real signal (echo texture
    in ultrasound, stain in histology, measured on fine-grained sets of one source); they
    are worth it where intensity statistics alone nearly separate the classes, as in an
    intermodal set whose every class comes from its own collection. Geometry, borders and
    nothing else below ``SHORTCUT_OFF``; everything at ``SHORTCUT_FULL`` and above.
    """
    return float(np.clip((shortcut - SHORTCUT_OFF) / (SHORTCUT_FULL - SHORTCUT_OFF), 0.0, 1.0))
