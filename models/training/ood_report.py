"""Writing the report of ``cbmir evaluate-ood``: ``ood_report.json`` and ``ood_report.md``.

:mod:`models.training.ood_eval` computes the figures; this module only lays them out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL = (
    "In distribution = the test split of the model's data set. Every score is fitted on the "
    "train split and thresholded at its own 99th percentile on the val split (about 1 % of "
    "in-distribution images flagged), as `cbmir calibrate` does. AUROC: telling OOD images "
    "(positives, higher score) from in-distribution test images, ties counted one half. "
    "FPR@95TPR: share of OOD images still accepted at the threshold that accepts 95 % of "
    "in-distribution test images (lower is better). Flagged: share above the calibrated "
    "threshold. Near OOD: a quick model with the evaluated model's recipe (few epochs, a "
    "per-class subset) is trained without one class; that class's test images are scored "
    "against the other classes' test images. Latency: the served score alone, one query "
    "at a time (as /search runs it), median."
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _classes(d: dict[str, float]) -> str:
    return ", ".join(f"{c} {_pct(s)}" for c, s in d.items())


def _summary_rows(r: dict[str, Any]) -> list[str]:
    rows = ["| score | in-dist test flagged | far AUROC mean / min | far FPR@95TPR mean | "
            "far flagged mean / min | near AUROC mean / min | near FPR@95TPR mean |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m in r["methods"]:
        far = [s["methods"][m] for s in r["far"].values()]
        near = [n["methods"][m] for n in r["near"]]

        def mm(xs: list[dict[str, float]], key: str, pct: bool = False) -> str:
            if not xs:
                return "–"
            v = [x[key] for x in xs]
            f = _pct if pct else (lambda x: f"{x:.4f}")
            return f"{f(float(np.mean(v)))} / {f(min(v))}"

        def mean(xs: list[dict[str, float]], key: str) -> str:
            return f"{np.mean([x[key] for x in xs]):.4f}" if xs else "–"

        name = f"**{m}** (chosen)" if m == r["chosen"] else m
        rows.append(f"| {name} | {_pct(r['in_distribution'][m]['flagged'])} | "
                    f"{mm(far, 'auroc')} | {mean(far, 'fpr95')} | {mm(far, 'flagged', True)} | "
                    f"{mm(near, 'auroc')} | {mean(near, 'fpr95')} |")
    return rows


def render_markdown(r: dict[str, Any]) -> str:
    chosen = r["chosen"]
    out = [f"# OOD detection: model `{r['model']['name']}` ({r['model']['fingerprint']})", "",
           f"In distribution: {r['data']['test_images']} test images of `{r['data']['root']}`"
           + (f" (`{r['data']['split_csv']}`)" if r["data"]["split_csv"] else "") + ". "
           f"Chosen score: `{chosen}`, threshold {r['thresholds'][chosen]:.4f}.", "",
           "## Scores compared", "", *_summary_rows(r), ""]
    if r["far"]:
        out += ["## Far OOD, chosen score", "",
                "| set | images | classified as | AUROC | FPR@95TPR | flagged |",
                "|---|---:|---|---:|---:|---:|"]
        for name, s in r["far"].items():
            m = s["methods"][chosen]
            out.append(f"| {name} | {s['images']} | {_classes(s['classified_as'])} | "
                       f"{m['auroc']:.4f} | {m['fpr95']:.4f} | {_pct(m['flagged'])} |")
        p = r["far_pooled"][chosen]
        out += [f"| all far sets pooled | | | {p['auroc']:.4f} | {p['fpr95']:.4f} | |", ""]
    if r["shifted"]:
        out += ["## Known classes from other sources, chosen score", "",
                "| set | images | classified as | flagged |", "|---|---:|---|---:|"]
        for name, s in r["shifted"].items():
            out.append(f"| {name} | {s['images']} | {_classes(s['classified_as'])} | "
                       f"{_pct(s['flagged'][chosen])} |")
        out.append("")
    if r.get("rerendered"):
        ms = r["methods"]
        out += ["## Known classes re-rendered: share flagged (false alarms where accuracy holds)",
                "", "| rendering | images | model accuracy | " + " | ".join(ms) + " |",
                "|---|---:|---:|" + "---:|" * len(ms)]
        for name, x in r["rerendered"].items():
            out.append(f"| {name} | {x['images']} | {x['accuracy']:.3f} | "
                       + " | ".join(_pct(x["flagged"][m]) for m in ms) + " |")
        out.append("")
    if r["near"]:
        others = [m for m in r["methods"] if m != chosen]
        out += ["## Near OOD: leave one class out", "",
                "| held-out class | images | quick model val acc | AUROC | FPR@95TPR | flagged | "
                + " | ".join(f"AUROC {m}" for m in others) + " |",
                "|---|---:|---:|---:|---:|---:|" + "---:|" * len(others)]
        for n in r["near"]:
            m = n["methods"][chosen]
            out.append(f"| {n['class']} | {n['images']} | {n['val_accuracy']:.4f} | "
                       f"{m['auroc']:.4f} | {m['fpr95']:.4f} | {_pct(m['flagged'])} | "
                       + " | ".join(f"{n['methods'][o]['auroc']:.4f}" for o in others) + " |")
        mean = {m: np.mean([n["methods"][m]["auroc"] for n in r["near"]]) for m in r["methods"]}
        out += [f"| mean | | | {mean[chosen]:.4f} | | | "
                + " | ".join(f"{mean[o]:.4f}" for o in others) + " |", ""]
    lat = r["latency"]
    out += ["## Added latency", "",
            f"`{lat['method']}` score of one query: median {lat['median_us']:.0f} µs, "
            f"p90 {lat['p90_us']:.0f} µs ({lat['queries']} queries).", "",
            "## Protocol", "", PROTOCOL, ""]
    return "\n".join(out)


def write_ood_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ood_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "ood_report.md").write_text(render_markdown(report))
