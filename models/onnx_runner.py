"""The CPU forward pass on ONNX Runtime: the embedding head exported once at load.

Why: measured side by side on the 2-core machine (bench/RESULTS.md, "Embedder"), ONNX
Runtime runs the same graph 1.5-3x faster than the frozen TorchScript trace at the batch
sizes the service sees (1-32 images), and one ``run`` call releases the GIL for the whole
forward pass. The export is checked against the eager model before it is used, exactly as
the TorchScript trace is; any failure (onnxruntime missing, an operator it cannot export)
leaves the caller on TorchScript. Works for any ``torch.nn.Module`` taking a ``uint8``
batch and returning ``(embeddings, probabilities)``, so for every architecture.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class OnnxRunner:
    """``uint8`` (N, C, S, S) numpy batch → (embeddings, probabilities) float32 numpy."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.input_name: str = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb, probs = self._session.run(None, {self.input_name: batch})
        return emb, probs


def export(head: torch.nn.Module, example: torch.Tensor, threads: int) -> OnnxRunner | None:
    """Export ``head`` (eval mode) and open it on ``threads`` CPU threads; None if that
    cannot be done or the result disagrees with ``head`` on ``example``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        buf = io.BytesIO()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                head, (example,), buf,  # type: ignore[arg-type]  # a file object works
                input_names=["x"], output_names=["emb", "probs"],
                dynamic_axes={"x": {0: "n"}, "emb": {0: "n"}, "probs": {0: "n"}},
                opset_version=17, dynamo=False,
            )
            ref = head(example)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # No busy-waiting between operators: on a shared machine a spinning thread takes
        # a core the event loop or a decode needs (the same reason as CBMIR_TORCH_THREADS).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        runner = OnnxRunner(session)
        got = runner(example.numpy())
    except Exception as e:  # an optimisation only; never fatal
        log.warning("could not run the model on ONNX Runtime (%s); using TorchScript", e)
        return None
    if all(np.allclose(a.numpy(), b, atol=1e-4) for a, b in zip(ref, got, strict=True)):
        return runner
    log.warning("ONNX Runtime disagrees with the eager model; using TorchScript")
    return None
