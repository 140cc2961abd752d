"""Image-folder data sets: scanning, the train/val/test split, and decoding to model input.

Layout: one sub-folder per class holding PNG/JPEG/TIFF/BMP/DICOM files (any mix). A split
CSV (columns ``path,label,split``; ``path`` relative to the data root) fixes the protocol;
without one a deterministic stratified split is made in which byte-identical files always
share a split, so no test image has a copy in train.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.config import ModelConfig
from models.imaging.decode import read_image_file
from models.imaging.errors import ImageDecodeError
from models.imaging.formats import is_image_file
from models.preprocess import prepare

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A data set that cannot be used; the message is one line for the command line."""


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    split: str


@dataclass(frozen=True)
class DatasetIndex:
    root: Path
    records: list[Record]
    class_names: list[str]
    fingerprint: str
    skipped: int

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]


@dataclass(frozen=True)
class Prepared:
    images: np.ndarray  # uint8 (N, C, S, S)
    labels: np.ndarray  # int64 index into the model's class names, -1 when unknown
    failed: int


def _fingerprint(records: Sequence[Record], root: Path) -> str:
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: str(r.path)):
        size = r.path.stat().st_size if r.path.exists() else -1
        h.update(f"{r.path.relative_to(root)},{r.label},{r.split},{size}\n".encode())
    return h.hexdigest()[:16]


def _scan_folders(root: Path) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if is_image_file(p))
        if not files:
            log.warning("class folder %s holds no image files; skipped", sub.name)
            continue
        classes[sub.name] = files
    return classes


def _read_split_csv(root: Path, split_csv: Path) -> tuple[list[Record], int]:
    if not split_csv.is_file():
        raise DatasetError(f"split CSV not found: {split_csv}")
    records: list[Record] = []
    missing = 0
    with split_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"path", "label", "split"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(f"{split_csv} must have the columns path,label,split")
        for row in reader:
            split = row["split"].strip().lower()
            if split not in SPLITS:
                raise DatasetError(
                    f"{split_csv}: unknown split {row['split']!r} (use train/val/test)"
                )
            path = root / row["path"]
            if not path.is_file():
                missing += 1
                continue
            records.append(Record(path, row["label"], split))
    if missing:
        log.warning("%d files named in %s are missing; skipped", missing, split_csv.name)
    return records, missing


def _auto_split(classes: dict[str, list[Path]], seed: int) -> list[Record]:
    """80/10/10 per class; groups of byte-identical files are assigned as one."""
    records: list[Record] = []
    for label, files in classes.items():
        groups: dict[str, list[Path]] = defaultdict(list)
        for p in files:
            groups[hashlib.md5(p.read_bytes()).hexdigest()].append(p)
        keys = sorted(groups)
        random.Random(f"{seed}:{label}").shuffle(keys)
        n = len(keys)
        n_test = max(1, round(0.1 * n)) if n >= 3 else 0
        n_val = max(1, round(0.1 * n)) if n >= 3 else 0
        for i, key in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            records.extend(Record(p, label, split) for p in groups[key])
    return records


def scan_dataset(root: Path, split_csv: Path | None = None, *, seed: int = 0) -> DatasetIndex:
    """Find the images and their split; refuse data sets that cannot train a classifier."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory not found: {root}")
    skipped = 0
    if split_csv is not None:
        records, skipped = _read_split_csv(root, Path(split_csv))
    else:
        classes = _scan_folders(root)
        flat = [p for p in root.iterdir() if is_image_file(p)]
        if not classes and flat:
            raise DatasetError(
                f"{root} holds images but no class sub-folders; put each class in its own folder"
            )
        records = _auto_split(classes, seed)
    class_names = sorted({r.label for r in records})
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise DatasetError(f"need at least 2 classes with images in {root}, found: {found}")
    for split in ("train", "val"):
        if not any(r.split == split for r in records):
            raise DatasetError(f"no images in the {split} split of {root}")
    return DatasetIndex(root, records, class_names, _fingerprint(records, root), skipped)


def _load_one(path: Path, cfg: ModelConfig) -> np.ndarray | None:
    try:
        return prepare(read_image_file(path).image, cfg)
    except (ImageDecodeError, OSError) as e:
        log.warning("skipping unreadable file %s: %s", path.name, e)
        return None


def load_prepared(
    records: Sequence[Record], cfg: ModelConfig, *, desc: str = "decode", progress: bool = True
) -> Prepared:
    """Decode and prepare every record (threads: Pillow releases the GIL while decoding)."""
    index = {name: i for i, name in enumerate(cfg.class_names)}
    s, c = cfg.image_size, cfg.in_channels
    images = np.empty((len(records), c, s, s), dtype=np.uint8)
    labels = np.empty(len(records), dtype=np.int64)
    keep = np.ones(len(records), dtype=bool)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda r: _load_one(r.path, cfg), records, chunksize=64)
        for i, arr in enumerate(tqdm(results, total=len(records), desc=desc, disable=not progress,
                                     unit="img", mininterval=1.0)):
            if arr is None:
                keep[i] = False
                continue
            images[i] = arr
            labels[i] = index.get(records[i].label, -1)
    failed = int((~keep).sum())
    if failed:
        log.warning("%d of %d files could not be read and were skipped", failed, len(records))
        images, labels = images[keep], labels[keep]
    return Prepared(images, labels, failed)
