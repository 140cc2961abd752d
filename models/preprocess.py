"""Preprocessing derived from the model config, in one place.

Two stages, used identically by training, evaluation and serving:

1. :func:`prepare` — channel conversion and resize of a decoded image to the model's
   input grid, kept as ``uint8`` (cheap to cache: training holds a whole data set this way).
2. :func:`normalize` — ``uint8`` batch → float tensor scaled by the config's mean and std.

Training-time augmentation operates on the output of stage 1 (scaled to [0, 1]) and is the
only extra step; it then enters stage 2 through :func:`standardize`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.config import ModelConfig


def prepare(image: Image.Image, cfg: ModelConfig) -> np.ndarray:
    """Decoded image → ``uint8`` array of shape (C, S, S) for the model's size S."""
    mode = "L" if cfg.in_channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    size = (cfg.image_size, cfg.image_size)
    if image.size != size:
        # Whole image squashed to a square: nothing is cropped away, and the
        # aspect change is the same for every image of a data set.
        image = image.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def normalize(batch: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """``uint8`` (N, C, S, S) → float32, ``(x/255 - mean) / std`` per channel."""
    return standardize(batch.to(torch.float32) / 255.0, cfg)


def standardize(unit: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Float (N, C, S, S) in [0, 1] → ``(x - mean) / std`` per channel. Training augments
    in [0, 1] and enters here, so it meets the same arithmetic as :func:`normalize`."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=unit.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=unit.device).view(1, -1, 1, 1)
    return (unit - mean) / std
