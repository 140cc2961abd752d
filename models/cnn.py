"""The classification CNN, shaped like timm models: ``forward_features`` then ``forward_head``.

In the spirit of Qayyum et al. (2017): convolution blocks followed by fully connected
layers; the L2-normalised output of the penultimate fully connected layer is the image
descriptor, so cosine similarity becomes an inner product in the vector index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CbmirCNN(nn.Module):
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
        fcs: list[nn.Module] = []
        fin = cin * 16
        for i, d in enumerate(fc_dims):
            fcs.append(nn.Linear(fin, d))
            if i < len(fc_dims) - 1:
                fcs += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            fin = d
        # The penultimate FC layer (last of ``fcs``) is the embedding, taken before its
        # activation so the descriptor keeps its sign information.
        self.fc = nn.Sequential(*fcs)
        self.head_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(fin, num_classes)
        self.embedding_dim = fin

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CbmirCNN:
        return cls(cfg.in_channels, cfg.num_classes, cfg.widths, cfg.fc_dims, cfg.dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        emb = self.fc(feats)
        if pre_logits:
            return emb
        return self.classifier(self.head_drop(F.relu(emb)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed_and_classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass giving L2-normalised embeddings and class probabilities."""
        emb = self.fc(self.forward_features(x))
        logits = self.classifier(F.relu(emb))
        return F.normalize(emb, dim=1), logits.softmax(dim=1)


def set_memory_format(module: CbmirCNN, channels_last: bool) -> CbmirCNN:
    """Move conv weights to channels-last (oneDNN's fast CPU layout) or back."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt)  # type: ignore[call-overload]


def flops_per_image(cfg: ModelConfig) -> int:
    """Multiply-adds × 2 of one forward pass (convs and linears; BN/ReLU/pool ignored)."""
    total = 0
    size = cfg.image_size
    cin = cfg.in_channels
    for w in cfg.widths:
        total += 2 * size * size * cin * w * 9
        size //= 2
        cin = w
    fin = cin * 16
    for d in [*cfg.fc_dims, cfg.num_classes]:
        total += 2 * fin * d
        fin = d
    return total
