"""Saving and loading a self-describing checkpoint: ``model.safetensors`` + ``config.json``.

Weights are safetensors, so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.arch import build_model
from models.config import CONFIG_FILE, WEIGHTS_FILE, ModelConfig
from models.net import RetrievalNet


class CheckpointError(ValueError):
    """The model directory is missing files or holds an inconsistent checkpoint."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model is meant to be shared
    os.replace(tmp, path)


def save_checkpoint(model: RetrievalNet, cfg: ModelConfig, out_dir: Path) -> ModelConfig:
    """Write weights then config (the config names the weights' hash, so it goes last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt", "arch": cfg.arch})
    os.replace(tmp, weights)
    cfg = cfg.model_copy(update={"weights_sha256": _sha256(weights)})
    write_config(cfg, out_dir)
    return cfg


def write_config(cfg: ModelConfig, out_dir: Path) -> None:
    _atomic_write_text(out_dir / CONFIG_FILE, json.dumps(cfg.model_dump(), indent=2) + "\n")


def load_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in model directory {model_dir}")
    try:
        return ModelConfig.model_validate_json(path.read_text())
    except ValueError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"invalid {path}: {first}") from None


def load_checkpoint(
    model_dir: Path, device: torch.device | str = "cpu"
) -> tuple[RetrievalNet, ModelConfig]:
    """Rebuild the network from ``config.json`` and load its safetensors weights."""
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in model directory {model_dir}")
    if cfg.weights_sha256 and _sha256(weights) != cfg.weights_sha256:
        raise CheckpointError(f"{weights} does not match the hash recorded in {CONFIG_FILE}")
    model = build_model(cfg)
    try:
        state = load_file(str(weights), device="cpu")
    except SafetensorError as e:  # e.g. a pickled torch.save file: never unpickled
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{weights} is not a safetensors file: {first}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, OSError) as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"weights in {model_dir} do not fit its config: {first}") from None
    model.eval()
    return model.to(device), cfg
