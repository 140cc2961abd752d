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
