"""What every cbmir architecture shares, shaped like timm models: ``forward_features`` then
``forward_head``.

In the spirit of Qayyum et al. (2017): convolutional features followed by fully connected
layers; the L2-normalised output of the penultimate fully connected layer is the image
descriptor, so cosine similarity becomes an inner product in the vector index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RetrievalNet(nn.Module):
    """What every cbmir architecture shares: a feature extractor (``forward_features``,
    defined by each architecture) and the head of Qayyum et al. — FC layers whose last
    one is the descriptor, then the classifier."""

    embedding_dim: int

    def _build_head(self, fin: int, fc_dims: list[int], num_classes: int,
                    dropout: float) -> None:
        fcs: list[nn.Module] = []
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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


def set_memory_format(module: RetrievalNet, channels_last: bool) -> RetrievalNet:
    """Move conv weights to channels-last (oneDNN's fast CPU layout) or back."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt)  # type: ignore[call-overload]
