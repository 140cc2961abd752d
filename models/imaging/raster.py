"""PNG, JPEG, TIFF and BMP through Pillow, to the 8-bit "L" or "RGB" image the model reads.

Any Pillow mode is brought to "L" (single-channel sources) or "RGB" (colour sources):
alpha is composited over black, 16/32-bit and float rasters are min-max scaled, EXIF
rotation is applied. Size is checked from the header before any pixel is decoded.
Reached through :func:`models.imaging.decode.decode_image`.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import cast

import numpy as np
from PIL import Image, ImageOps

from models.imaging.errors import CorruptImageError, ImageTooLargeError
from models.imaging.formats import CONTENT_TYPES, DecodedImage
from models.imaging.scale import PendingDecode, footprint, pil_bytes, reduced_size, reduction

log = logging.getLogger(__name__)

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_EXIF_ORIENTATION = 0x0112


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max of the image itself to 0..255 (a constant image gives 0); NaN/inf give 0.

    For 16/32-bit and float rasters, which carry no display window of their own.
    """
    values = arr.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not all_finite:
        if not finite.any():
            return np.zeros(arr.shape, dtype=np.uint8)
        values = np.where(finite, values, np.nan)
    lo = float(np.nanmin(values))
    hi = float(np.nanmax(values))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (values - lo) * (255.0 / (hi - lo))
    if not all_finite:
        out = np.nan_to_num(out, nan=0.0)
    return np.rint(out).astype(np.uint8)


def _over_black(image: Image.Image, color_mode: str) -> Image.Image:
    """Composite an image with alpha over black: medical images have black backgrounds,
    so transparent areas become background rather than whatever colour they hid."""
    alpha = image.getchannel("A")
    out = Image.new(color_mode, image.size, 0)
    out.paste(image.convert(color_mode), (0, 0), alpha)
    return out


def _palette_is_gray(image: Image.Image) -> bool:
    """True when every palette entry the image uses is a gray (r == g == b)."""
    palette = image.getpalette("RGB") or []
    colors = image.getcolors(256) or []
    for _count, index in colors:
        start = 3 * cast(int, index)  # a palette index for mode P
        rgb = palette[start : start + 3]
        if len(rgb) == 3 and not rgb[0] == rgb[1] == rgb[2]:
            return False
    return True


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any Pillow mode → "L" (single-channel sources) or "RGB" (colour sources)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        gray = _palette_is_gray(image)
        if mode == "PA" or image.has_transparency_data:
            return _over_black(image.convert("LA" if gray else "RGBA"), "L" if gray else "RGB")
        return image.convert("L" if gray else "RGB")
    if mode in ("LA", "La"):
        return _over_black(image.convert("LA"), "L")
    if mode in ("RGBA", "RGBa"):
        return _over_black(image.convert("RGBA"), "RGB")
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I;16N, I, F
        return Image.fromarray(_scale_to_uint8(np.asarray(image)))
    # CMYK, YCbCr, RGBX, LAB, HSV: Pillow knows their conversion to RGB.
    return image.convert("RGB")


def open_raster(data: bytes, fmt: str, max_pixels: int, downscale_above: int | None = None
                ) -> PendingDecode:
    """PNG, JPEG, TIFF or BMP bytes (``fmt`` as sniffed): header read, cost known.

    Above ``downscale_above`` pixels the image is reduced on read (see
    :mod:`models.imaging.scale`); ``max_pixels`` bounds what has to be held decoded at
    once: the full size, except for JPEG, which is read already reduced.
    """
    pil_format = _PIL_FORMATS[fmt]
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; turn the warning into
        # an exception so a bomb is always refused and never logged as a Python warning.
        # (catch_warnings is process-global; the worst a race can do is leave this one
        # filter installed or not, which only changes how a bomb is reported.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Image.open only parses the header: the size is known before any pixel is
            # decoded, so a tiny file claiming 50,000 x 50,000 is refused without allocating.
            image: Image.Image = Image.open(io.BytesIO(data), formats=[pil_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        log.info("refused %s: Pillow decompression-bomb check (%s)", fmt, type(exc).__name__)
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageTooLargeError(
            f"image is too large: exceeds the limit of {limit} pixels"
        ) from None
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        log.info("corrupt %s header: %s", fmt, type(exc).__name__)
        raise CorruptImageError(f"{pil_format} image is corrupt or truncated") from None

    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{pil_format} image has no pixels")
    k = reduction(width, height, downscale_above)
    target = reduced_size(width, height, k)
    source_mode = image.mode
    if k > 1 and fmt == "jpeg":
        # Decoded straight at 1/2, 1/4 or 1/8 scale in the DCT, never at full size.
        try:
            image.draft(source_mode, target)
        except Exception:  # a mode draft cannot keep: decode at full size instead
            log.debug("JPEG draft refused for mode %s", source_mode)
    read_w, read_h = image.size
    if read_w * read_h > max_pixels:
        raise ImageTooLargeError.of_size(width, height, max_pixels)
    kept = min(read_w * read_h, target[0] * target[1])
    cost = footprint(read_w * read_h, pil_bytes(source_mode), kept)

    def decode() -> DecodedImage:
        return _decode(image, fmt, (width, height), target if k > 1 else None, source_mode,
                       max_pixels)

    return PendingDecode(fmt, width, height, k, cost, decode)


def _decode(image: Image.Image, fmt: str, size: tuple[int, int],
            target: tuple[int, int] | None, source_mode: str, max_pixels: int
            ) -> DecodedImage:
    width, height = size
    pil_format = _PIL_FORMATS[fmt]
    try:
        image.load()  # multi-page TIFF: the first page, the one Image.open selects
        if target is not None and image.size != target:
            # A box filter: every source pixel counts once (no aliasing), in C, for every
            # mode including 16-bit grey; the min-max to 8 bits then sees the reduced image.
            image = image.resize(target, Image.Resampling.BOX)
        if fmt in ("jpeg", "tiff") and image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            # Phone photos of films and scanned slides carry their rotation in EXIF.
            image = ImageOps.exif_transpose(image)
        image = _to_8bit(image)
    except MemoryError:
        raise ImageTooLargeError.of_size(width, height, max_pixels) from None
    except Exception as exc:  # OSError ("image file is truncated"), zlib.error, ...
        log.info("corrupt %s pixel data: %s", fmt, type(exc).__name__)
        raise CorruptImageError(f"{pil_format} image is corrupt or truncated") from None
    metadata: dict[str, str | int | float | None] = {"width": width, "height": height,
                                                     "mode": source_mode}
    if target is not None:
        metadata["decoded_width"], metadata["decoded_height"] = image.size
    return DecodedImage(image=image, format=fmt, content_type=CONTENT_TYPES[fmt],
                        metadata=metadata)


def decode_raster(data: bytes, fmt: str, max_pixels: int, downscale_above: int | None = None
                  ) -> DecodedImage:
    """PNG, JPEG, TIFF or BMP bytes (``fmt`` as sniffed) → 8-bit "L" or "RGB" image."""
    return open_raster(data, fmt, max_pixels, downscale_above).decode()
