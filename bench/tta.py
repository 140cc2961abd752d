"""Test-time augmentation of the embedding, measured: ``python -m bench.tta``.

For one model and its split: the descriptor and the probabilities averaged over the image
and re-sampled views of it (border-padded shifts by 1/8 of the side in four directions,
zooms ×1.1 and ×0.9; no flips, laterality matters), for gallery (train) and queries
(test) alike, against the image alone. Prints accuracy, macro F1 and full-ranking mAP per
set of views (README, "The recipe on data sets nobody tuned it on"). The service does not
use TTA: the measured gain does not pay for the forward passes it costs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.embed import Embedder
from models.training.dataset import load_prepared, scan_dataset
from models.training.metrics import accuracy, macro_f1, retrieval_scores

log = logging.getLogger("bench.tta")
VIEWS = ("none", "shift4", "zoom2", "both")


def _warp(x: torch.Tensor, scale: float = 1.0, tx: float = 0.0, ty: float = 0.0
          ) -> np.ndarray:
    n, c, s, _ = x.shape
    theta = torch.tensor([[1 / scale, 0, tx], [0, 1 / scale, ty]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, s, s], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def views(images: np.ndarray, kind: str) -> list[np.ndarray]:
    """The image itself, then the views ``kind`` adds."""
    out = [images]
    x = torch.from_numpy(images).float()
    shift = 2 * max(1, images.shape[2] // 16) / images.shape[2]  # 1/8 of the side
    if kind in ("shift4", "both"):
        out += [_warp(x, tx=shift), _warp(x, tx=-shift), _warp(x, ty=shift),
                _warp(x, ty=-shift)]
    if kind in ("zoom2", "both"):
        out += [_warp(x, scale=1.1), _warp(x, scale=0.9)]
    return out


def embed(embedder: Embedder, images: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    vecs, probs = [], []
    for start in range(0, len(images), 1024):
        for v in views(images[start : start + 1024], kind):
            e = embedder.embed_prepared(v)
            vecs.append((start, e.vectors))
            probs.append((start, e.probabilities))
    n = len(images)
    v_sum = np.zeros((n, embedder.embedding_dim), np.float32)
    p_sum = np.zeros((n, embedder.config.num_classes), np.float32)
    for (s, v), (_, p) in zip(vecs, probs, strict=True):
        v_sum[s : s + len(v)] += v
        p_sum[s : s + len(p)] += p
    return v_sum / np.linalg.norm(v_sum, axis=1, keepdims=True), p_sum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--split-csv", required=True, type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedder = Embedder.load(args.model)
    cfg = embedder.config
    ds = scan_dataset(args.data, args.split_csv)
    gal = load_prepared(ds.split("train"), cfg, desc="decode gallery")
    qry = load_prepared(ds.split("test"), cfg, desc="decode queries")
    for kind in tqdm(VIEWS, desc="view sets", unit="set"):
        t0 = time.perf_counter()
        g_vec, _ = embed(embedder, gal.images, kind)
        q_vec, q_prob = embed(embedder, qry.images, kind)
        pred = q_prob.argmax(1)
        scores = retrieval_scores(q_vec, g_vec, qry.labels, gal.labels,
                                  {"all": None, "predicted": pred})
        log.info("%-6s (%d views) accuracy %.4f  macro F1 %.4f  mAP all %.4f  predicted %.4f"
                 "  (%.0f s)", kind, len(views(qry.images[:1], kind)),
                 accuracy(qry.labels, pred), macro_f1(qry.labels, pred, cfg.num_classes),
                 scores["all"].ap.mean(), scores["predicted"].ap.mean(),
                 time.perf_counter() - t0)


if __name__ == "__main__":
    main()
