"""One preprocessing for training, evaluation and serving."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.config import ModelConfig
from models.imaging.decode import decode_image, read_image_file
from models.preprocess import normalize, prepare
from models.training.dataset import Record, load_prepared

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo"


def _cfg(channels: int = 1, size: int = 64) -> ModelConfig:
    return ModelConfig(in_channels=channels, image_size=size, class_names=["CXR", "Hand"],
                       mean=[0.4] * channels, std=[0.3] * channels)


def test_train_eval_and_serve_paths_give_identical_input() -> None:
    cfg = _cfg(size=48)
    path = sorted((DEMO / "Hand").glob("*.jpeg"))[0]
    via_dataset = load_prepared([Record(path, "Hand", "test")], cfg, progress=False).images[0]
    via_upload = prepare(decode_image(path.read_bytes()).image, cfg)  # what /search does
    via_file = prepare(read_image_file(path).image, cfg)
    assert via_dataset.shape == (1, 48, 48) and via_dataset.dtype == np.uint8
    assert np.array_equal(via_dataset, via_upload) and np.array_equal(via_upload, via_file)


def test_channels_follow_the_config() -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    assert prepare(rgb, _cfg(1, 32)).shape == (1, 32, 32)
    grey = rgb.convert("L")
    three = prepare(grey, _cfg(3, 32))
    assert three.shape == (3, 32, 32) and np.array_equal(three[0], three[2])


def test_normalize_uses_config_mean_and_std() -> None:
    cfg = _cfg()
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(x, cfg), torch.full((1, 1, 2, 2), (1.0 - 0.4) / 0.3))


def test_png_and_jpeg_of_same_pixels_prepare_alike() -> None:
    arr = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = prepare(decode_image(buf.getvalue()).image, _cfg())
    assert np.array_equal(out[0], arr)
