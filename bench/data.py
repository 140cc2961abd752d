"""Real images for the benchmarks: MedNIST when present, else the bundled demo gallery.

Three disjoint sets, balanced over classes and drawn with a fixed seed:
``gallery`` (embedded to make the search galleries), ``queries`` (held out: query vectors
and the /search request image) and ``fresh`` (never in the demo gallery the service is
seeded with, so /index ingests new images instead of answering "duplicate").
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import REPO
from models.imaging.formats import is_image_file

log = logging.getLogger(__name__)

DEMO_DIR = REPO / "app" / "demo"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mednist"


@dataclass(frozen=True)
class Img:
    name: str
    data: bytes
    label: str


@dataclass(frozen=True)
class ImageSets:
    source: str  # "mednist" or "demo"
    gallery: list[Img]
    queries: list[Img]
    fresh: list[Img]

    @property
    def classes(self) -> list[str]:
        return sorted({im.label for im in self.gallery})


def _demo_files() -> list[tuple[Path, str]]:
    return [(p, d.name) for d in sorted(DEMO_DIR.iterdir()) if d.is_dir()
            for p in sorted(d.iterdir()) if is_image_file(p)]


def _balanced(rows: list[tuple[str, str]], per_class: int, rng: np.random.Generator
              ) -> list[tuple[str, str]]:
    by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_class[row[1]].append(row)
    out: list[tuple[str, str]] = []
    for label in sorted(by_class):
        items = by_class[label]
        picks = rng.choice(len(items), size=min(per_class, len(items)), replace=False)
        out += [items[i] for i in sorted(picks.tolist())]
    return out


def _read(root: Path, rows: list[tuple[str, str]]) -> list[Img]:
    return [Img(Path(rel).name, (root / rel).read_bytes(), label) for rel, label in rows]


def load_sets(data_dir: Path | None, n_gallery: int, n_queries: int, n_fresh: int,
              seed: int = 0) -> ImageSets:
    """``n_*`` are totals over all classes (rounded to a multiple of the class count)."""
    root = data_dir or DEFAULT_DATA
    split = root / "split.csv"
    rng = np.random.default_rng(seed)
    if split.is_file():
        demo_md5 = {hashlib.md5(p.read_bytes()).hexdigest() for p, _ in _demo_files()}
        with split.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        n_cls = len({r["label"] for r in rows})
        train = [(r["path"], r["label"]) for r in rows
                 if r["split"] == "train" and r["md5"] not in demo_md5]
        held = [(r["path"], r["label"]) for r in rows if r["split"] == "test"]
        # Draw gallery and fresh together so the two can never share an image.
        per = -(-n_gallery // n_cls) + -(-n_fresh // n_cls)
        both = _balanced(train, per, rng)
        by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for row in both:
            by_class[row[1]].append(row)
        g_per = -(-n_gallery // n_cls)
        gallery_rows = [r for label in sorted(by_class) for r in by_class[label][:g_per]]
        fresh_rows = [r for label in sorted(by_class) for r in by_class[label][g_per:]]
        query_rows = _balanced(held, -(-n_queries // n_cls), rng)
        sets = ImageSets("mednist", _read(root, gallery_rows), _read(root, query_rows),
                         _read(root, fresh_rows))
    else:
        log.warning("no MedNIST split at %s: using the %s demo images instead", split, DEMO_DIR)
        files = _demo_files()
        demo = [Img(p.name, p.read_bytes(), label) for p, label in files]
        n_cls = len({im.label for im in demo})
        q_per = max(1, -(-n_queries // n_cls))
        by: dict[str, list[Img]] = defaultdict(list)
        for im in demo:
            by[im.label].append(im)
        queries = [im for label in sorted(by) for im in by[label][-q_per:]]
        gallery = [im for label in sorted(by) for im in by[label][:-q_per]][:n_gallery]
        sets = ImageSets("demo", gallery, queries, _variants(demo, n_fresh, rng))
    log.info("images from %s: %d gallery, %d queries, %d fresh", sets.source,
             len(sets.gallery), len(sets.queries), len(sets.fresh))
    return sets


def _variants(base: list[Img], n: int, rng: np.random.Generator) -> list[Img]:
    """Distinct new images (seeded ±2 grey-level noise, PNG) when no unseen real ones exist."""
    out = []
    for i in range(n):
        src = base[i % len(base)]
        arr = np.asarray(Image.open(io.BytesIO(src.data)).convert("L"), dtype=np.int16)
        arr = np.clip(arr + rng.integers(-2, 3, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="PNG")
        out.append(Img(f"variant{i:05d}.png", buf.getvalue(), src.label))
    return out
