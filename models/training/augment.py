"""Training-time augmentation: the ways an archive can render the same anatomy.

A model trained on one data set's renderings learns the rendering as much as the anatomy:
cbmir 0.1's MedNIST model called 0 of 46 real chest CT slices ChestCT, because MedNIST
renders chest CT with a low-contrast window that no archive uses. Each step below varies
one thing an archive (or an export, or a user's screenshot) changes, so that the classes
can only be told apart by what they show:

- geometry: rotation, scale, shift, aspect; the frame filled with black, the edge colour
  or white (borders and padding of exports); mirror images and quarter turns only when
  asked for (``cbmir train --symmetries``);
- window/level and the choice of window (after smoothing or a median filter, since a
  narrow window stretches JPEG noise): a random clip-and-stretch between two intensity
  quantiles of the image itself, histogram equalisation, matching the intensity histogram
  of another image of the batch (its rendering, this anatomy), gamma, contrast, brightness;
- colour (colour images only): saturation and channel gains, sometimes grey;
- resolution and resampling (down and up again), blur, sensor noise, JPEG re-compression;
- burned-in text, markers, rulers and circles (annotations and overlays).

No flips by default: laterality matters in radiology (a chest's heart, a hand's side),
and where there is none (cells, tissue, skin) they cost this small network accuracy within
its training budget (README). Everything works on float batches in [0, 1] on the training
device, before normalisation; only JPEG goes through Pillow. The probabilities and ranges
are data-set independent by design: they describe archives, not any one data set.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities (``p_*``) and ranges of each step; the defaults are the recipe."""

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.08
    aspect: float = 0.1
    p_smooth: float = 0.3
    p_median: float = 0.6
    p_window: float = 0.7
    window_low_max: float = 0.95
    p_equalize: float = 0.2
    p_match: float = 0.3
    p_gamma: float = 0.5
    p_contrast: float = 0.5
    p_saturation: float = 0.4
    p_gains: float = 0.3
    p_grey: float = 0.1
    p_resample: float = 0.25
    p_blur: float = 0.3
    p_noise: float = 0.25
    p_overlay: float = 0.2
    p_jpeg: float = 0.4
    symmetries: tuple[str, ...] = ()
    """Of ``flip_lr``, ``flip_ud``, ``rot90``: each applied to half the images (``rot90``: a
    random number of quarter turns), so together they span the symmetries allowed."""

    def scaled(self, strength: float) -> AugmentSpec:
        """The same steps with every rendering probability times ``strength`` (geometry
        is kept as it is): 0 leaves only rotation, scale, shift and borders."""
        from dataclasses import fields, replace

        return replace(self, **{f.name: min(1.0, getattr(self, f.name) * strength)
                                for f in fields(self) if f.name.startswith("p_")})


def recipe_spec(strength: float | None, symmetries: Sequence[str] | None = None) -> AugmentSpec:
    """The augmentation a model's recorded training arguments describe; a strength of
    ``None`` (recorded before strength was measured) is full strength."""
    spec = AugmentSpec(symmetries=tuple(symmetries or ()))
    return spec.scaled(1.0 if strength is None else float(strength))


_BLUR = (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0])[None]) / 16


def make_overlays(size: int, count: int = 256, seed: int = 0) -> torch.Tensor:
    """Masks (count, 1, size, size) in [0, 1] of burned-in text, lines and circles."""
    rng = random.Random(seed)
    font = ImageFont.load_default()
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :/.-"
    big = size * 4  # drawn large, then reduced: thin strokes as an export would have them
    out = np.zeros((count, 1, size, size), np.float32)
    for i in range(count):
        im = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(im)
        for _ in range(rng.randint(1, 4)):
            kind, x, y = rng.random(), rng.randrange(big), rng.randrange(big)
            if kind < 0.6:
                corners = [(4, 4), (4, big - 20), (big // 2, 4), (big - 80, big - 20)]
                at = rng.choice(corners) if rng.random() < 0.7 else (x, y)
                text = "".join(rng.choice(chars) for _ in range(rng.randint(2, 12)))
                draw.text(at, text, fill=255, font=font)
            elif kind < 0.8:
                end = (x + rng.randint(-big // 3, big // 3), y + rng.randint(-big // 3, big // 3))
                draw.line([(x, y), end], fill=255, width=rng.randint(1, 4))
            else:
                r = rng.randint(4, big // 8)
                draw.ellipse([x - r, y - r, x + r, y + r], outline=255, width=rng.randint(1, 3))
        out[i, 0] = np.asarray(im.resize((size, size), Image.Resampling.BOX), np.float32) / 255
    return torch.from_numpy(out)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) brightness of a grey or RGB batch."""
    return x.mean(1, keepdim=True) if x.shape[1] == 3 else x


def _blur(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = _BLUR.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median filter: removes the speckle of a noisy JPEG and keeps edges."""
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(n, c, 9, h * w)
    return patches.median(2).values.view(n, c, h, w)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of the brightness of a float batch in [0, 1].

    Each grey level maps to the share of pixels strictly darker than it, scaled so the
    darkest level is 0 and the brightest 1 (a large flat background stays dark). Colour
    images keep their hue: the brightness change is added to every channel.
    """
    n, _, h, w = x.shape
    lum = luma(x)
    q = (lum * 255).round().long().clamp(0, 255).view(n, -1)
    ones = torch.ones_like(q, dtype=x.dtype)
    hist = torch.zeros(n, 256, device=x.device, dtype=x.dtype).scatter_add_(1, q, ones)
    below = hist.cumsum(1) - hist
    top = below.gather(1, q.max(1, keepdim=True).values).clamp(min=1)
    new = (below / top).gather(1, q).view(n, 1, h, w)
    return (x + (new - lum)).clamp(0, 1)


def _draw(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g).mul_(hi - lo).add_(lo)


def _symmetries(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if "rot90" in spec.symmetries:
        turns = torch.randint(4, (n,), generator=g)
        for k in (1, 2, 3):
            x = _apply(x, turns == k, lambda v, k=k: torch.rot90(v, k, (2, 3)))
    if "flip_lr" in spec.symmetries:
        x = _apply(x, _draw(n, 0.5, g), lambda v: v.flip(3))
    if "flip_ud" in spec.symmetries:
        x = _apply(x, _draw(n, 0.5, g), lambda v: v.flip(2))
    return x


def _geometry(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    x = _symmetries(x, spec, g)
    n, c, s, _ = x.shape
    ang = _uniform(n, -spec.rotate_deg, spec.rotate_deg, g) * (math.pi / 180)
    scale = torch.exp(_uniform(n, math.log(spec.scale[0]), math.log(spec.scale[1]), g))
    tx, ty = _uniform(n, -spec.shift, spec.shift, g), _uniform(n, -spec.shift, spec.shift, g)
    asp = torch.exp(_uniform(n, -spec.aspect, spec.aspect, g))
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * asp, -sin, tx], 1),
                         torch.stack([sin, cos / asp, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, [n, c, s, s], align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones(n, 1, s, s, device=x.device, dtype=x.dtype), grid,
                           mode="bilinear", padding_mode="zeros", align_corners=False)
    # What shows outside the frame: the image's edge colour, black, or (rarely) white.
    edge = x[:, :, [0, -1], :].mean((2, 3), keepdim=True)
    pick = torch.rand(n, generator=g).view(n, 1, 1, 1).to(x.device)
    fill = torch.where(pick < 0.5, edge, torch.where(pick < 0.95, 0.0, 1.0))
    return warped + (1 - inside) * fill


def _window(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    """Clip to two random quantiles of the image's brightness and stretch between them."""
    m = x.shape[0]
    lum = luma(x)[:, 0, ::2, ::2].reshape(m, -1).sort(1).values
    k = lum.shape[1] - 1
    qa = _uniform(m, 0.0, spec.window_low_max, g)
    qb = qa + (1 - qa) * (0.1 + 0.9 * torch.rand(m, generator=g))
    lo = lum.gather(1, (qa * k).long().view(m, 1).to(x.device)).view(m, 1, 1, 1)
    hi = lum.gather(1, (qb.clamp(max=1) * k).long().view(m, 1).to(x.device)).view(m, 1, 1, 1)
    hi = torch.maximum(hi, lo + 4 / 255)
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Give each image the brightness histogram of its reference (a monotone remap)."""
    m, _, h, w = x.shape
    lum = luma(x)
    target = luma(ref).reshape(m, -1).sort(1).values
    rank = lum.reshape(m, -1).argsort(1).argsort(1)
    new = target.gather(1, rank).view(m, 1, h, w)
    return (x + (new - lum)).clamp(0, 1)


def _jpeg(x: torch.Tensor, quality: list[int]) -> torch.Tensor:
    c = x.shape[1]
    arr = (x.detach().cpu() * 255).round().to(torch.uint8).numpy()
    out = np.empty(arr.shape, np.float32)
    for i, q in enumerate(quality):
        buf = io.BytesIO()
        Image.fromarray(arr[i, 0] if c == 1 else arr[i].transpose(1, 2, 0)).save(
            buf, "JPEG", quality=q)
        back = np.asarray(Image.open(buf), np.float32) / 255
        out[i] = back[None] if c == 1 else back.transpose(2, 0, 1)
    return torch.from_numpy(out).to(x)


def _apply(x: torch.Tensor, mask: torch.Tensor, fn: object) -> torch.Tensor:
    """``fn`` on the rows of ``x`` where ``mask`` holds (in place; skipped when none)."""
    if bool(mask.any()):
        idx = torch.nonzero(mask).flatten().to(x.device)
        x[idx] = fn(x[idx])  # type: ignore[operator]
    return x


def augment(x: torch.Tensor, generator: torch.Generator, spec: AugmentSpec | None = None,
            overlays: torch.Tensor | None = None) -> torch.Tensor:
    """A float batch (N, C, S, S) in [0, 1] → the same anatomy, rendered another way."""
    spec = spec or AugmentSpec()
    g = generator
    n, c, _, _ = x.shape
    x = _geometry(x, spec, g)
    # Smoothing before a window: a narrow window stretches a noisy JPEG into mostly noise.
    x = _apply(x, _draw(n, spec.p_smooth, g), _blur)
    x = _apply(x, _draw(n, spec.p_median, g), _median3)
    x = _apply(x, _draw(n, spec.p_window, g), lambda v: _window(v, spec, g))
    x = _apply(x, _draw(n, spec.p_equalize, g), equalize)
    match = _draw(n, spec.p_match, g)
    if bool(match.any()):
        ref = x[torch.randint(n, (int(match.sum()),), generator=g).to(x.device)]
        idx = torch.nonzero(match).flatten().to(x.device)
        x[idx] = _match(x[idx], ref)
    gamma = torch.where(_draw(n, spec.p_gamma, g), torch.exp(_uniform(n, -0.6, 0.6, g)), 1.0)
    x = x.clamp(1e-4, 1) ** gamma.view(n, 1, 1, 1).to(x)
    con = torch.where(_draw(n, spec.p_contrast, g), _uniform(n, 0.7, 1.3, g), 1.0)
    bri = torch.where(_draw(n, spec.p_contrast, g), _uniform(n, -0.15, 0.15, g), 0.0)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * con.view(n, 1, 1, 1).to(x) + mean + bri.view(n, 1, 1, 1).to(x)).clamp(0, 1)
    if c == 3:
        # Only images in colour get colour changes: grey stored as RGB stays grey.
        colour = ((x - luma(x)).abs().mean((1, 2, 3)) > 2 / 255).cpu()
        sat = torch.where(_draw(n, spec.p_saturation, g) & colour, _uniform(n, 0.5, 1.5, g), 1.0)
        lum = luma(x)
        x = lum + (x - lum) * sat.view(n, 1, 1, 1).to(x)
        gains = 1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1)
        gains = torch.where((_draw(n, spec.p_gains, g) & colour).view(n, 1, 1, 1), gains, 1.0)
        x = (x * gains.to(x)).clamp(0, 1)
        grey = _draw(n, spec.p_grey, g).view(n, 1, 1, 1).to(x.device)
        x = torch.where(grey, luma(x).expand_as(x), x)
    s = x.shape[-1]
    factor = float(_uniform(1, 1.5, 4.0, g))
    x = _apply(x, _draw(n, spec.p_resample, g), lambda v: F.interpolate(
        F.interpolate(v, size=max(8, int(s / factor)), mode="area"), size=s, mode="bilinear",
        align_corners=False))
    x = _apply(x, _draw(n, spec.p_blur, g), _blur)
    sigma = torch.where(_draw(n, spec.p_noise, g), _uniform(n, 0.005, 0.05, g), 0.0)
    # One noise field for all channels: a grey image must stay grey.
    noise = torch.randn((n, 1, *x.shape[2:]), generator=g).to(x)
    x = (x + sigma.view(n, 1, 1, 1).to(x) * noise).clamp(0, 1)
    if overlays is not None:
        over = _draw(n, spec.p_overlay, g)
        if bool(over.any()):
            m = int(over.sum())
            masks = overlays[torch.randint(len(overlays), (m,), generator=g)].to(x)
            value = torch.where(_draw(m, 0.8, g), _uniform(m, 0.7, 1.0, g), 0.0)
            idx = torch.nonzero(over).flatten().to(x.device)
            x[idx] = x[idx] * (1 - masks) + masks * value.view(m, 1, 1, 1).to(x)
    jp = torch.nonzero(_draw(n, spec.p_jpeg, g)).flatten()
    if len(jp):
        quality = _uniform(len(jp), 30, 95, g).long().tolist()
        x[jp.to(x.device)] = _jpeg(x[jp.to(x.device)], quality)
    return x
