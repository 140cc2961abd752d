"""Test images of known classes rendered the ways an archive or a user might, for
``cbmir evaluate-ood``: the share flagged there is the score's false alarms on images the
model should still know (the same renderings as ``bench/realworld/check.py``)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageOps


def _window(img: Image.Image) -> Image.Image:
    if img.mode != "L":
        return img  # a window is a grey-scale rendering
    arr = np.asarray(img, np.float32)
    lo, hi = np.percentile(arr, [20, 80])
    return Image.fromarray((np.clip((arr - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB" if img.mode == "RGB" else "L").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _text(img: Image.Image) -> Image.Image:
    out = img.convert("RGB")
    ImageDraw.Draw(out).text((2, 2), "R  12/03/2019  W400 L40", fill=(255, 255, 255))
    return out if img.mode == "RGB" else out.convert("L")


RENDERINGS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "window 20–80 %": _window,
    "gamma 0.5": lambda im: im.point(lambda v: int(255 * (v / 255) ** 0.5)),
    "gamma 2": lambda im: im.point(lambda v: int(255 * (v / 255) ** 2)),
    "equalised": ImageOps.equalize,
    "JPEG q20": lambda im: _jpeg(im, 20),
    "black border": lambda im: ImageOps.expand(im, border=max(im.size) // 5, fill=0),
    "burned-in text": _text,
    "grey": lambda im: im.convert("L"),
}
