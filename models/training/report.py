"""The evaluation report: its fixed text, its files, and its headline figures recorded in
the model's config and model card (``cbmir evaluate --record``).

:mod:`models.training.evaluate` computes the report; this module only writes it out.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import load_config, write_config
from models.training.metrics import RetrievalScores
from models.training.plots import plot_confusion_matrix, plot_pr_curves

log = logging.getLogger(__name__)

KS = (1, 10, 100)
"""The cut-offs k of every P@k and mAP@k in the report."""

PROTOCOL = (
    "Gallery = train split, queries = test split; a gallery image is relevant to a query "
    "when both have the same true class. Scope 'all' ranks the whole gallery by inner "
    "product of L2-normalised embeddings; scope 'predicted' ranks only the gallery images "
    "whose class is the query's predicted class (Qayyum et al. 2017), so a misclassified "
    "query retrieves no relevant image and scores AP = 0 and P@k = 0. AP is over the full "
    "ranking: (1/R) * sum of P@i over the ranks i of relevant images, R = all relevant "
    "images in the gallery (relevant images outside the ranking count as misses); AP@k "
    "divides by min(R, k); P@k divides by k even when fewer than k images are ranked."
)

PAPER: dict[str, Any] = {
    "citation": "Qayyum A, Anwar SM, Awais M, Majid M. Medical image retrieval using deep "
    "convolutional neural network. Neurocomputing 266 (2017) 8-20.",
    "accuracy": 0.9977,
    "map": 0.69,
    "classes": 24,
    "modalities": 5,
    "note": "the paper's own 24-class, 5-modality data set; numbers are for orientation, "
    "not a like-for-like comparison",
}


def write_report(report: dict[str, Any], scores: dict[str, RetrievalScores], out: Path) -> None:
    """``report.json``, ``report.md``, the confusion matrix and the precision-recall curves."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cls, ret = report["classification"], report["retrieval"]
    plot_confusion_matrix(np.array(cls["confusion_matrix"]), report["model"]["classes"],
                          out / "confusion_matrix.png")
    plot_pr_curves(
        {
            f"all gallery (mAP {ret['all']['map']:.3f})": scores["all"].pr_curve(),
            f"predicted class (mAP {ret['predicted']['map']:.3f}; "
            f"{ret['predicted']['misclassified_queries']} misclassified queries at 0)":
                scores["predicted"].pr_curve(),
        },
        out / "pr_curve.png",
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    log.info("wrote %s/report.md", out)


def _f(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def results_table(report: dict[str, Any]) -> str:
    """The headline figures beside the paper's, as a Markdown table."""
    c, r, p = report["classification"], report["retrieval"], report["paper"]
    a, pr = r["all"], r["predicted"]
    rows = [
        ("classification accuracy", _f(c["accuracy"]), "", _f(p["accuracy"])),
        ("macro F1", _f(c["macro_f1"]), "", "–"),
        ("mAP (full ranking)", _f(a["map"]), _f(pr["map"]), _f(p["map"])),
    ]
    rows += [(f"mAP@{k}", _f(a[f"map_at_{k}"]), _f(pr[f"map_at_{k}"]), "–") for k in (10, 100)]
    rows += [(f"P@{k}", _f(a[f"precision_at_{k}"]), _f(pr[f"precision_at_{k}"]), "–") for k in KS]
    rows += [
        ("classes", str(report["data"]["classes"]), "", str(p["classes"])),
        ("modalities", "–", "", str(p["modalities"])),
    ]
    lines = [
        "| metric | this model, all gallery | this model, predicted class | Qayyum et al. 2017 |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {m} | {x} | {y} | {z} |" for m, x, y, z in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    m, d, c, t = report["model"], report["data"], report["classification"], report["timing"]
    pr = report["retrieval"]["predicted"]
    lines = [
        f"# cbmir evaluation: {m['name']}",
        "",
        f"Model `{m['fingerprint']}`: {len(m['classes'])} classes, embedding dim "
        f"{m['embedding_dim']}, {m['flops_per_image'] / 1e6:.1f} MFLOP per image.  ",
        f"Data `{d['fingerprint']}`: {d['gallery']} gallery images (train split), "
        f"{d['queries']} queries (test split); {d['skipped']} listed files missing, "
        f"{d['unreadable']} unreadable, {d['unknown_label']} of unknown class left out.",
        "",
        "## Results",
        "",
        results_table(report),
        "",
        f"{pr['misclassified_queries']} of {d['queries']} queries are misclassified; in the "
        "predicted-class scope each of them scores AP 0 and P@k 0, and the figures include them.",
        "",
        f"Paper: {report['paper']['citation']} Its figures are for {report['paper']['note']}.",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        for name, v in c["per_class"].items()
    ]
    s = t["search_ms_per_query"]
    lines += [
        "",
        "## Timing",
        "",
        f"- embedding: {t['embed_images_per_s']:.0f} images/s on {t['device']} "
        f"({t['embed_s']} s; decoding took {t['decode_s']} s more)",
        f"- search, k={t['search_k']}: {s['all']:.3f} ms/query over the whole gallery, "
        f"{s['predicted']:.3f} ms/query within the predicted class ({t['search_note']})",
        f"- metric computation: {t['metrics_s']} s",
        "",
        "## Protocol",
        "",
        report["protocol"],
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![precision-recall](pr_curve.png)",
        "",
    ]
    return "\n".join(lines)


def record_in_model_card(model_dir: Path, out_dir: Path) -> None:
    """Copy the headline figures of ``out_dir/report.json`` into the model's config
    (``metrics.evaluation``) and its model card's "Evaluation" section."""
    report = json.loads((Path(out_dir) / "report.json").read_text())
    table = results_table(report)
    cfg = load_config(Path(model_dir))
    c, r, d = report["classification"], report["retrieval"], report["data"]
    evaluation = {
        "accuracy": c["accuracy"],
        "macro_f1": c["macro_f1"],
        "map_all": r["all"]["map"],
        "map_predicted": r["predicted"]["map"],
        "gallery": d["gallery"],
        "queries": d["queries"],
        "data_fingerprint": d["fingerprint"],
        "markdown": table + "\n\n" + f"Protocol: {report['protocol']}",
    }
    # The weights are untouched, so the recorded weights hash stays valid.
    write_config(cfg.model_copy(update={"metrics": {**cfg.metrics, "evaluation": evaluation}}),
                 Path(model_dir))
    card = Path(model_dir) / "README.md"
    if card.is_file():
        text = re.split(r"\n## Evaluation\n", card.read_text(), maxsplit=1)[0].rstrip("\n")
        card.write_text(f"{text}\n\n## Evaluation\n\n{evaluation['markdown']}\n")
