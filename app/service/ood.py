"""The service's out-of-distribution check: score, verdict, policy and what to tell the user.

``CBMIR_OOD_POLICY``: ``flag`` (default) answers as usual with the verdict and a warning,
searching all classes instead of the predicted one; ``reject`` refuses an OOD query, and
an unlabelled OOD upload, with 422; ``off`` computes nothing. A model without calibration
serves with ``in_distribution: null`` and a warning; it never fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.service.errors import InvalidInput
from models.config import ModelConfig
from models.ood import OodScorer, load_scorer

log = logging.getLogger(__name__)

Policy = Literal["flag", "reject", "off"]


class OutOfDistribution(InvalidInput):
    """Policy ``reject``: the image is not like anything the model was trained on."""


@dataclass(frozen=True)
class Verdict:
    in_distribution: bool | None
    score: float | None
    threshold: float | None

    @property
    def out(self) -> bool:
        return self.in_distribution is False

    def reason(self, model: str) -> str:
        return (f"the image does not look like the images model {model!r} was trained on "
                f"(OOD score {self.score:.2f} > threshold {self.threshold:.2f})")


UNCHECKED = Verdict(None, None, None)


@dataclass(frozen=True)
class OodGate:
    scorer: OodScorer | None
    policy: Policy
    model_name: str

    @classmethod
    def open(cls, model_dir: Path, cfg: ModelConfig, policy: Policy) -> OodGate:
        scorer = load_scorer(model_dir, cfg)
        if scorer is None and policy != "off":
            log.warning("model %s has no OOD calibration: in_distribution will be null "
                        "(run `cbmir calibrate`)", cfg.name)
        return cls(scorer, policy, cfg.name)

    @property
    def checks(self) -> bool:
        return self.scorer is not None and self.policy != "off"

    def assess(self, vectors: np.ndarray, images: np.ndarray) -> list[Verdict]:
        """One verdict per row: descriptors (N, D) and their ``uint8`` inputs (N, C, S, S)."""
        if self.scorer is None or self.policy == "off":
            return [UNCHECKED] * len(vectors)
        scores = self.scorer.score(vectors, images)
        t = self.scorer.threshold
        return [Verdict(bool(s <= t), float(s), t) for s in scores]

    def refuse(self, verdict: Verdict, what: str) -> None:
        """Raise :class:`OutOfDistribution` under ``reject`` for an OOD verdict."""
        if self.policy == "reject" and verdict.out:
            raise OutOfDistribution(f"{what} is out of distribution: "
                                    f"{verdict.reason(self.model_name)}; "
                                    "CBMIR_OOD_POLICY=reject refuses it")

    def warnings(self, verdict: Verdict, widened: bool) -> list[str]:
        """One-line warnings for a search answer (empty when there is nothing to say)."""
        if self.policy == "off":
            return []
        if self.scorer is None:
            return [f"model {self.model_name!r} has no out-of-distribution calibration, so "
                    "in_distribution is unknown (run `cbmir calibrate`)"]
        if not verdict.out:
            return []
        then = ("so its predicted class means little and all classes were searched"
                if widened else "so the prediction and the results may mean little")
        return [f"query out of distribution: {verdict.reason(self.model_name)}, {then}"]

    def info(self) -> dict[str, Any]:
        s = self.scorer
        return {"method": s.method if s else None, "threshold": s.threshold if s else None,
                "policy": self.policy}
