"""The architectures a model config can name (``arch``), and what is counted on them."""

from __future__ import annotations

import torch
from torch import nn

from models.cnn import CbmirCNN
from models.config import ModelConfig
from models.net import RetrievalNet
from models.resnet import CbmirResNet


def build_model(cfg: ModelConfig) -> RetrievalNet:
    """The network a config names, untrained."""
    if cfg.arch == "cbmir-resnet":
        return CbmirResNet.from_config(cfg)
    return CbmirCNN.from_config(cfg)


def flops_per_image(cfg: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass, counted on the built network (convolutions
    and linear layers; BN, ReLU and pooling ignored), so every architecture is counted
    the same way."""
    model = build_model(cfg).eval()
    total = 0

    def count(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * out.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size))
    for h in hooks:
        h.remove()
    return total
