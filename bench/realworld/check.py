"""Right answers on files as archives hold them: the figures of the default-model issue.

    python -m bench.realworld.check [--model models/multimodal] [--data ../shared/data]

1. ``realworld-dev``: 46 native chest CT DICOM slices through ``POST /search`` (the
   service's own routes, in process), and the same slices rendered to 8-bit PNG with a
   lung (−600/1500), mediastinal (40/400), bone (500/2000) and full-range window. Counted
   against the collection's label (ChestCT) and against each slice's anatomical level
   (``anatomy.csv``: a reading by eye of what each slice shows — thorax, or abdomen/pelvis
   below the lungs, since the TCGA-LUAD series run down to the pelvis).
2. Real DICOM files of other scanners shipped by pydicom and pydicom-data.
3. Re-rendered test images: a fixed sample of the multimodal test split, each rendered
   the ways an archive or a user might (window, gamma, re-compression, resampling,
   borders, text), through the same decode and preprocessing as the service.

Writes ``bench/realworld/RESULTS.md`` and ``results.json``. Never trains or tunes anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from app.config import Settings
from app.main import create_app
from models import DEFAULT_MODEL_DIR
from models.embed import Embedder
from models.imaging.decode import decode_image

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
WINDOWS: dict[str, tuple[float, float] | None] = {
    "lung": (-600, 1500), "mediastinal": (40, 400), "bone": (500, 2000), "full": None,
}
PYDICOM_FILES = {  # file → the class its image shows (read by eye), pydicom's own names
    "CT_small.dcm": "ChestCT", "RG1_UNCI.dcm": "CXR", "RG1_J2KR.dcm": "CXR",
    "693_UNCI.dcm": "HeadCT", "693_J2KR.dcm": "HeadCT",
    "explicit_VR-UN.dcm": "AbdomenCT", "J2K_pixelrep_mismatch.dcm": "HeadCT",
}
OUT_OF_CLASS = {  # real files showing none of the 11 classes: the OOD flag should say so
    "MR2_UNCI.dcm": "shoulder MR", "RG3_UNCI.dcm": "lower-leg radiograph",
    "US1_UNCI.dcm": "lymph-node ultrasound", "JPGLosslessP14SV1_1s_1f_8b.dcm": "echocardiogram",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "abdominal MR", "bad_sequence.dcm": "neck CT (crop)",
}


def window_png(path: Path, window: tuple[float, float] | None) -> bytes:
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0))
    lo, hi = (float(hu.min()), float(hu.max())) if window is None else (
        window[0] - window[1] / 2, window[0] + window[1] / 2)
    arr = (np.clip((hu - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _answer(client: TestClient, blob: bytes) -> dict[str, Any]:
    r = client.post("/search?k=1", files={"file": ("q", blob)})
    r.raise_for_status()
    return dict(r.json()["prediction"])


def _predict(client: TestClient, blob: bytes) -> str:
    return str(_answer(client, blob)["label"])


def realworld(client: TestClient, data: Path) -> dict[str, Any]:
    folder = data / "realworld-dev" / "ChestCT_dicom"
    levels = {r["file"]: r["level"] for r in csv.DictReader((HERE / "anatomy.csv").open())}
    files = sorted(folder.glob("*.dcm"))
    out: dict[str, Any] = {}
    renders: dict[str, Any] = {"dicom": lambda p: p.read_bytes()}
    renders |= {name: (lambda p, w=w: window_png(p, w)) for name, w in WINDOWS.items()}
    for name, render in renders.items():
        preds = [_predict(client, render(p)) for p in tqdm(files, desc=name, leave=False)]
        by_level: dict[str, Counter[str]] = {}
        for p, pred in zip(files, preds, strict=True):
            by_level.setdefault(levels.get(p.name, "other"), Counter())[pred] += 1
        out[name] = {"ChestCT": preds.count("ChestCT"), "n": len(preds),
                     "by_level": {k: dict(v) for k, v in by_level.items()}}
    return out


def other_scanners(client: TestClient) -> dict[str, Any]:
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        log.warning("pydicom-data is not installed: its CR/CT files are left out")
    out = {}
    for name, expected in (PYDICOM_FILES | OUT_OF_CLASS).items():
        path = next((r / name for r in roots if (r / name).is_file()), None)
        if path is not None:
            pred = _answer(client, path.read_bytes())
            out[name] = {"expected": expected, "predicted": pred["label"],
                         "in_distribution": pred.get("in_distribution"),
                         "class": name in PYDICOM_FILES}
    return out


def _renderings(img: Image.Image) -> dict[str, Image.Image]:
    grey = img.convert("L")
    arr = np.asarray(grey, np.float32)
    lo, hi = np.percentile(arr, [20, 80])
    win = Image.fromarray((np.clip((arr - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8))

    def jpeg(im: Image.Image, q: int) -> Image.Image:
        buf = io.BytesIO()
        im.convert("RGB" if im.mode == "RGB" else "L").save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue()))
    w, h = img.size
    text = img.convert("RGB")
    ImageDraw.Draw(text).text((2, 2), "R  12/03/2019  W400 L40", fill=(255, 255, 255))
    return {
        "as stored": img,
        "window 20–80 %": win if img.mode == "L" else img,
        "gamma 0.5": img.point(lambda v: int(255 * (v / 255) ** 0.5)),
        "gamma 2": img.point(lambda v: int(255 * (v / 255) ** 2)),
        "equalised": ImageOps.equalize(img),
        "JPEG q20": jpeg(img, 20),
        "downscaled ×4": img.resize((max(8, w // 4), max(8, h // 4)), Image.Resampling.BICUBIC),
        "upscaled ×4": img.resize((w * 4, h * 4), Image.Resampling.BICUBIC),
        "black border": ImageOps.expand(img, border=max(w, h) // 5, fill=0),
        "burned-in text": text if img.mode == "RGB" else text.convert("L"),
        "grey": grey,
    }


def rerendered(embedder: Embedder, data: Path, per_class: int) -> dict[str, float]:
    rows = [r for r in csv.DictReader((data / "multimodal-split.csv").open())
            if r["split"] == "test"]
    rng = np.random.default_rng(0)
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    sample = [r for c in sorted(by_class) for r in
              [by_class[c][i] for i in sorted(rng.choice(len(by_class[c]), per_class, False))]]
    hits: Counter[str] = Counter()
    for r in tqdm(sample, desc="re-rendered", leave=False):
        img = decode_image((data / r["path"]).read_bytes()).image
        variants = _renderings(img)
        probs = embedder.embed_images(list(variants.values())).probabilities
        for name, p in zip(variants, probs, strict=True):
            hits[name] += int(embedder.class_names[int(p.argmax())] == r["label"])
    return {name: hits[name] / len(sample) for name in hits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"model": str(a.model)}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model_dir=a.model, data_dir=Path(tmp), seed_demo=False, device="cpu")
        with TestClient(create_app(settings)) as client:
            for _ in range(600):  # the model loads in a background thread
                if client.get("/health").status_code == 200:
                    break
                time.sleep(0.1)
            results["realworld"] = realworld(client, a.data)
            results["other_scanners"] = other_scanners(client)
    results["rerendered"] = rerendered(Embedder.load(a.model, "cpu"), a.data, a.per_class)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (a.out / "RESULTS.md").write_text(render_markdown(results))
    print(render_markdown(results))  # noqa: T201


def render_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Real files and re-renderings — model `{res['model']}`", "",
             "Command: `python -m bench.realworld.check --model " + res["model"] + "`", "",
             "## realworld-dev: 46 chest CT slices (TCGA-LUAD) through `POST /search`", "",
             "| rendering | predicted ChestCT (of 46) | thorax slices → ChestCT "
             "| abdomen/pelvis slices → AbdomenCT | other slices |", "|---|---:|---:|---:|---|"]
    for name, r in res["realworld"].items():
        lv = r["by_level"]
        th, ab = lv.get("thorax", {}), lv.get("abdomen-pelvis", {})
        lines.append(f"| {name} | {r['ChestCT']} | {th.get('ChestCT', 0)} / {sum(th.values())} "
                     f"| {ab.get('AbdomenCT', 0)} / {sum(ab.values())} | {lv.get('other', {})} |")
    lines += ["", "## Other scanners (pydicom, pydicom-data)", "",
              "Files of the 11 classes, then files of none of them (right answer: flagged "
              "out of distribution).", "",
              "| file | shows | predicted | in distribution |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['expected']} | {v['predicted']} | {v.get('in_distribution')} |"
              for k, v in sorted(res["other_scanners"].items(),
                                 key=lambda kv: not kv[1].get("class", True))]
    lines += ["", "## Multimodal test images, re-rendered (accuracy)", "",
              "| rendering | accuracy |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["rerendered"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
