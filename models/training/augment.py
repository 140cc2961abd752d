"""Training-time augmentation, applied to whole batches on the training device.

Mild on purpose: small rotations, scale and shift and a little brightness/contrast
jitter are label-preserving for radiographs, CT/MR slices and microscopy alike, so the
defaults need no per-data-set tuning. No flips: laterality matters in medical images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine (±10°, ×0.9–1.1, ±6 % shift) and intensity jitter for a float batch."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).mul_(hi - lo).add_(lo).to(x.device)

    angle = u(-10.0, 10.0) * (math.pi / 180.0)
    scale = u(0.9, 1.1)
    tx, ty = u(-0.06, 0.06), u(-0.06, 0.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = u(0.9, 1.1).view(n, 1, 1, 1).to(x.dtype)
    brightness = u(-0.1, 0.1).view(n, 1, 1, 1).to(x.dtype)
    return x * contrast + brightness
