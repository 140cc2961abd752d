"""Synthetic images no medical model has seen, for the far-OOD check of ``cbmir evaluate-ood``.

Four kinds, each drawn from a seed so every run scores the same pictures: uniform noise,
blank (one flat colour), a screenshot of text, and a natural-looking outdoor scene (sky,
sun, hills, trees, a house) drawn with PIL. They stand for what a real service gets by
mistake: a corrupt or empty export, a screenshot of a report, a phone photo.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("noise", "blank", "text", "scene")

_TEXT = ("patient study series report findings impression normal within limits no acute "
         "process seen left right lobe contrast enhanced axial slice mm cm follow up "
         "recommended date time signed reviewed clinical history comparison")
_WORDS = _TEXT.split(" ")


def _noise(rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(48, 257))
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def _blank(rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(48, 257))
    # Black, white and mid-grey first (the usual empty exports), then random colours.
    fixed = [(0, 0, 0), (255, 255, 255), (128, 128, 128)]
    i = int(rng.integers(0, 6))
    colour = fixed[i] if i < 3 else tuple(int(c) for c in rng.integers(0, 256, 3))
    return Image.new("RGB", (size, size), colour)


def _text(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(200, 480)), int(rng.integers(150, 360))
    dark = rng.random() < 0.25  # some screenshots are dark-mode
    bg = (30, 30, 30) if dark else (250, 250, 250)
    fg = (220, 220, 220) if dark else (20, 20, 20)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 18), fill=(60, 90, 160))  # a window's title bar
    font = ImageFont.load_default(size=int(rng.integers(10, 20)))
    y = 24
    while y < h - 12:
        words = rng.choice(_WORDS, size=int(rng.integers(3, 10)))
        draw.text((6, y), " ".join(str(x) for x in words), fill=fg, font=font)
        y += int(rng.integers(14, 26))
    return img


def _scene(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(160, 400)), int(rng.integers(120, 300))
    horizon = int(h * rng.uniform(0.45, 0.7))
    arr = np.zeros((h, w, 3), np.float32)
    top, bottom = rng.uniform([40, 90, 160], [110, 160, 230]), rng.uniform([170, 200, 220],
                                                                          [220, 235, 250])
    t = np.linspace(0, 1, horizon)[:, None]
    arr[:horizon] = (top * (1 - t) + bottom * t)[:, None, :]
    arr[horizon:] = rng.uniform([40, 90, 20], [100, 160, 60])
    arr += rng.normal(0, 6, arr.shape)  # grass and sky are never perfectly flat
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    sx, sy, r = int(rng.integers(20, w - 20)), int(rng.integers(10, horizon // 2 + 11)), int(
        rng.integers(8, 24))
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 230, 120))
    for _ in range(int(rng.integers(1, 4))):  # hills
        cx, hw, hh = int(rng.integers(0, w)), int(rng.integers(40, 160)), int(rng.integers(15, 60))
        draw.ellipse((cx - hw, horizon - hh, cx + hw, horizon + hh),
                     fill=tuple(int(c) for c in rng.integers([30, 80, 20], [90, 140, 60])))
    for _ in range(int(rng.integers(2, 7))):  # trees: a trunk and a crown
        x, y = int(rng.integers(0, w)), int(rng.integers(horizon, h))
        s = int(rng.integers(8, 24))
        draw.rectangle((x - s // 5, y - s, x + s // 5, y), fill=(90, 60, 30))
        draw.ellipse((x - s, y - 3 * s, x + s, y - s), fill=(20, int(rng.integers(90, 150)), 30))
    if rng.random() < 0.7:  # a house
        x, y, s = int(rng.integers(10, w - 60)), int(rng.integers(horizon, h - 5)), int(
            rng.integers(20, 50))
        wall = tuple(int(c) for c in rng.integers(150, 240, 3))
        draw.rectangle((x, y - s, x + s, y), fill=wall)
        draw.polygon([(x - 4, y - s), (x + s + 4, y - s), (x + s // 2, y - s - s // 2)],
                     fill=(150, 40, 30))
        draw.rectangle((x + s // 3, y - s // 2, x + 2 * s // 3, y), fill=(80, 50, 30))
    return img.filter(ImageFilter.GaussianBlur(0.6))


_MAKERS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "noise": _noise, "blank": _blank, "text": _text, "scene": _scene,
}


def synthetic_image(kind: str, seed: int) -> Image.Image:
    """One image of ``kind`` (see :data:`KINDS`), the same for the same seed."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown synthetic kind {kind!r}; use one of {', '.join(KINDS)}")
    return _MAKERS[kind](np.random.default_rng([KINDS.index(kind), seed]))


def synthetic_set(kind: str, n: int, seed: int = 0) -> list[Image.Image]:
    return [synthetic_image(kind, seed * 100_003 + i) for i in range(n)]
