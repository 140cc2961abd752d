"""An image back to PNG bytes: what ``GET /images/{id}`` shows of any stored format."""

from __future__ import annotations

import io

from PIL import Image


def render_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (for ``GET /images/{id}``)."""
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_thumbnail(image: Image.Image, max_side: int) -> bytes:
    """A small PNG of ``image``: its longer side at most ``max_side`` px (never enlarged)."""
    thumb = image.copy()
    if thumb.mode not in ("L", "RGB"):
        thumb = thumb.convert("RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
