"""A small residual network for retrieval, in the same timm shape as :class:`models.cnn.CbmirCNN`.

Why a second architecture: the plain conv stack's 2,048→256 fully connected layer holds
most of its weights and overfits small data sets (a few hundred images per class), while
residual stages with global average pooling learn more per image at the same cost. Stem
and pooling follow the input size so every size runs its first stage on about 32×32 px:
the cost per image stays near-constant from 64 to 128 px, and 128 px inputs keep their
detail in the stem instead of being resized away.

The descriptor is still the penultimate fully connected layer (Qayyum et al. 2017): global
pooling → FC (``fc_dims[-1]`` wide, taken before its ReLU) → classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.net import RetrievalNet


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def stem_reduction(image_size: int) -> tuple[int, bool]:
    """(stem stride, max-pool after the stem) so that the first stage sees ~32 px."""
    if image_size >= 96:
        return 2, True
    if image_size >= 48:
        return 2, False
    return 1, False


class CbmirResNet(RetrievalNet):
    """Stem → residual stages (stride 2 between stages) → global pool → FC → classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: list[int],
        depths: list[int],
        fc_dims: list[int],
        dropout: float = 0.2,
        stem_convs: int = 1,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError("cbmir-resnet needs one depth per stage width")
        stride, pool = stem_reduction(image_size)
        w0 = widths[0]
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, w0, 3, stride, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stem_convs - 1):
            stem += [nn.Conv2d(w0, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0),
                     nn.ReLU(inplace=True)]
        if pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        cin = w0
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for j in range(d):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._build_head(cin, fc_dims, num_classes, dropout)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CbmirResNet:
        return cls(cfg.in_channels, cfg.num_classes, cfg.image_size, cfg.widths, cfg.depths,
                   cfg.fc_dims, cfg.dropout, cfg.stem_convs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)
