"""The same file meets the same model input in training, evaluation and serving.

Training and evaluation read files through ``load_prepared``; the service decodes
uploads with ``prepare_query``. Both must give the same uint8 array, and training's float
path (augmentation in [0, 1], then ``standardize``) must equal the served ``normalize``
when augmentation is off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.data
import torch
from conftest import demo_files

from app.service.decoding import MB, DecodeGate, Decoder, pixel_cap_for
from app.service.uploads import prepare_query
from models.config import ModelConfig
from models.embed import Embedder
from models.preprocess import normalize, standardize
from models.training.dataset import Record, load_prepared


def _files() -> list[Path]:
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # DICOM: rescale and window
    return [*demo_files(per_class=1), ct]


def test_train_eval_and_serve_prepare_identically(tiny_model: Path) -> None:
    embedder = Embedder.load(tiny_model, "cpu")
    # The service's decoder: its memory budget and pixel cap (under which nothing changes).
    decoder = Decoder(DecodeGate(512 * MB), pixel_cap_for(embedder.config))
    files = _files()
    prepared = load_prepared([Record(p, "x", "test") for p in files], embedder.config,
                             progress=False)
    assert prepared.failed == 0
    for i, path in enumerate(files):
        served = prepare_query(path.read_bytes(), embedder, decoder)
        assert served.dtype == np.uint8
        np.testing.assert_array_equal(prepared.images[i], served, err_msg=path.name)


def test_training_float_path_equals_the_served_normalisation() -> None:
    cfg = ModelConfig(in_channels=3, image_size=32, class_names=["a", "b"],
                      mean=[0.2, 0.4, 0.6], std=[0.1, 0.2, 0.3])
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(standardize(batch.float() / 255.0, cfg), normalize(batch, cfg))
