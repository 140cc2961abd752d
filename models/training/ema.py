"""An exponential moving average of a network's weights (Polyak averaging).

The average of the weights over the last few hundred steps generalises better than the
last weights, and far better than a noisy single epoch on a small data set. Buffers
(BatchNorm statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch

from models.net import RetrievalNet


class WeightEma:
    """``update`` after every optimiser step; ``model`` is the averaged network."""

    def __init__(self, model: RetrievalNet, decay: float) -> None:
        self.model: RetrievalNet = copy.deepcopy(model).eval()
        self.decay = decay
        self.steps = 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: RetrievalNet) -> None:
        self.steps += 1
        # Warm-up: early on, an average over few steps would mostly hold the random init.
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values(),
                            strict=True):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1 - d)
            else:
                avg.copy_(cur)
