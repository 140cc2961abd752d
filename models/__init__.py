"""The CNN of cbmir: architecture, preprocessing, training, embedding and evaluation.

Never imports :mod:`app`; the service depends on this package, not the other way round.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "mednist"
