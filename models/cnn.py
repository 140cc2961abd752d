"""The plain convolutional network of cbmir 0.1 (``arch: cbmir-cnn``): conv blocks, then
the shared head of :class:`models.net.RetrievalNet`."""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig
from models.net import RetrievalNet


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CbmirCNN(RetrievalNet):
    """Conv blocks (conv-BN-ReLU-pool) → FC layers → classifier.

    The last conv map is average-pooled to 4×4 so one architecture serves any input
    size the config names (64 px for MedNIST, larger for microscopy) with the same
    fully connected widths.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int],
        fc_dims: list[int],
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            blocks.append(_block(cin, w))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self._build_head(cin * 16, fc_dims, num_classes, dropout)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CbmirCNN:
        return cls(cfg.in_channels, cfg.num_classes, cfg.widths, cfg.fc_dims, cfg.dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)
