"""The issue's performance targets, checked against a run's results (reported, not asserted)."""

from __future__ import annotations

from typing import Any


def _target(tid: str, text: str, value: float | None, threshold: float, higher_is_better: bool,
            unit: str = "", note: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"id": tid, "target": text, "value": value, "threshold": threshold,
                           "unit": unit, "note": note}
    if value is None or value != value:
        row.update(passed=None, margin="not measured")
        return row
    passed = value >= threshold if higher_is_better else value <= threshold
    # Relative distance to the threshold, signed so that positive means "missed by".
    gap = (threshold - value) / threshold if higher_is_better else (value - threshold) / threshold
    row.update(passed=passed, margin=(f"missed by {gap:.0%}" if not passed
                                      else f"met with {-gap:.0%} to spare"))
    return row


def _level(levels: list[dict[str, Any]], c: int) -> tuple[dict[str, Any] | None, str]:
    """The row at concurrency ``c``, else the nearest lower one (quick runs skip 16)."""
    rows = [r for r in levels if r["concurrency"] <= c]
    if not rows:
        return None, ""
    row = max(rows, key=lambda r: r["concurrency"])
    return row, "" if row["concurrency"] == c else f"at c={row['concurrency']} (no c={c} run)"


def evaluate(sections: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    svc = sections.get("service") or {}
    if "levels" in svc:
        r16, n16 = _level(svc["levels"], 16)
        r1, n1 = _level(svc["levels"], 1)
        # The service can batch at most 16 one-image requests from 16 clients: compare with
        # the in-process pipeline at batch 16 (else the best batch measured), with the
        # better of its thread settings: a ceiling is the best the machine did.
        refs = [dict(p, threads=threads) for key, threads in (("pipeline", "default"),
                                                              ("pipeline_1thread", "1"))
                for p in svc.get(key, []) if p["batch"] == 16]
        refs = refs or [dict(p, threads="default") for p in svc.get("pipeline", [])]
        ref = max(refs, key=lambda p: p["images_per_s"], default=None)
        if r16 and ref:
            out.append(_target(
                "search_vs_pipeline", "/search throughput at 16 clients >= 50% of in-process "
                f"pipeline (batch {ref['batch']}, {ref['threads']} threads)",
                r16["service"]["throughput_rps"] / ref["images_per_s"], 0.5, True, "ratio", n16))
        if r1:
            out.append(_target(
                "p50_vs_floor", "/search p50 at 1 client <= 4x the HTTP floor's p50",
                r1["service"]["p50_ms"] / r1["floor"]["p50_ms"], 4.0, False, "ratio", n1))
        if r16:
            out.append(_target(
                "rps_vs_floor", "/search throughput at 16 clients >= 40% of the floor's",
                r16["service"]["throughput_rps"] / r16["floor"]["throughput_rps"], 0.4, True,
                "ratio", n16))
        if "ingest_http" in svc and "ingest_local" in svc:
            out.append(_target(
                "index_vs_local", "/index rate >= 60% of in-process embed-and-store rate",
                svc["ingest_http"]["images_per_s"] / svc["ingest_local"]["images_per_s"], 0.6,
                True, "ratio"))
    mem = svc.get("memory")
    if mem and mem.get("peak_rss_bytes"):
        out.append(_target(
            "memory_large_uploads", f"peak server RSS during {mem['requests']} concurrent "
            "6000x6000 16-bit PNG searches <= 1.5 GiB, every request answered 200/413/503",
            mem["peak_rss_bytes"] / 2**30, 1.5, False, "GiB",
            f"statuses {sorted(set(mem['statuses']))}"))
        if not mem["all_answered"]:
            out[-1].update(passed=False, margin=f"statuses {sorted(set(mem['statuses']))}")
    snap = (sections.get("scale") or {}).get("service", {}).get("during_snapshot")
    if snap and snap.get("published"):
        note = f"{snap['snapshot_s']:.1f} s snapshot of {sections['scale']['n']:,} items"
        out.append(_target("stall_search", "search p99 while a 1M-item snapshot is written "
                           "<= 50 ms", snap["search"]["p99_ms"], 50, False, "ms", note))
        out.append(_target("stall_health", "/health p99 during the same <= 100 ms",
                           snap["health"]["p99_ms"], 100, False, "ms", note))
    emb = sections.get("embedder") or {}
    b256 = next((r for r in emb.get("by_batch", []) if r["batch"] == 256), None)
    if b256:
        out.append(_target("embedder_256_rate", "embedder at batch 256 >= 1,000 img/s",
                           b256["frozen_img_s"], 1000, True, "img/s"))
        out.append(_target("embedder_256_fraction", "embedder at batch 256 >= 25% of matmul "
                           "ceiling", b256.get("frozen_fraction_of_matmul"), 0.25, True, "ratio"))
    search = sections.get("search") or {}
    if search.get("by_size"):
        big = search["by_size"][-1]
        n = big["n"]
        note = "" if n >= 1_000_000 else f"at n={n:,} (no 1M run)"
        for kind in ("ivf", "hnsw"):
            row = big["by_kind"].get(kind)
            if not row:
                continue
            p = row["predicted"]
            ok_recall = p["recall_at_k"] >= 0.95
            out.append(_target(
                f"scale_search_{kind}", f"predicted-scope search <= 5 ms/query at recall@10 >= "
                f"0.95, 1M items ({kind})", p["ms_per_query"], 5.0, False, "ms",
                (note + "; " if note else "") + f"recall@10 {p['recall_at_k']:.3f}"
                + ("" if ok_recall else " (< 0.95: target missed)")))
            if not ok_recall:
                out[-1].update(passed=False, margin=f"recall {p['recall_at_k']:.3f} < 0.95")
    scale = sections.get("scale") or {}
    if "probe" in scale:
        p = scale["probe"]
        note = "" if scale["n"] >= 1_000_000 else f"at n={scale['n']:,} (no 1M run)"
        out.append(_target("scale_rss", "RSS of model + 1M-item index <= 1.5x raw float32 "
                           "vectors + the model", p["rss_after_index"] / p["budget_bytes"], 1.0,
                           False, "of budget", note))
    return out
