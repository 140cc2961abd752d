"""Rebuild the bundled demo gallery (app/demo/) from the shared data sets.

    python tools/build_demo_gallery.py --data ../shared/data --per-class 40

Draws ``--per-class`` files of every class of ``multimodal-split.csv`` from its **train**
split with a fixed seed (none is a test image of the reported evaluation) and copies them
unchanged, byte for byte, into ``app/demo/<class>/``. The attributions the sources'
licences require are in ``app/demo/ATTRIBUTION.md``; keep them in step with the classes.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    by_class: dict[str, list[str]] = defaultdict(list)
    with (a.data / "multimodal-split.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train":
                by_class[row["label"]].append(row["path"])
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        pick = random.Random(f"{a.seed}:{label}").sample(paths, min(a.per_class, len(paths)))
        out = DEMO / label
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for rel in sorted(pick):
            src = a.data / rel
            shutil.copyfile(src, out / src.name)


if __name__ == "__main__":
    main()
