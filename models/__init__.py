"""A trained model of cbmir: architecture (cnn), config, checkpoint, preprocessing, embedding.

Beside it, :mod:`models.imaging` turns bytes into pixels and :mod:`models.training` makes
and judges a model. Never imports :mod:`app`; the service depends on this package, not the
other way round.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "multimodal"
