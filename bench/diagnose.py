"""Plain-language reasons for missed targets, computed from the same run's figures."""

from __future__ import annotations

from typing import Any


def _levels(svc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["concurrency"]: r for r in svc.get("levels", [])}


def _p50_note(svc: dict[str, Any]) -> str | None:
    r = _levels(svc).get(1)
    if r is None:
        return None
    v, f = r["service"], r["floor"]
    parts = {"HTTP floor": f["p50_ms"], "decode": v.get("decode_ms"),
             "CNN forward": v.get("forward_ms"), "index search + SQLite": v.get("search_ms")}
    known = {k: x for k, x in parts.items() if x is not None}
    rest = v["p50_ms"] - sum(known.values())
    wait = svc["settings"]["batch_wait_ms"]
    budget = 4 * f["p50_ms"]
    text = (f"/search p50 at 1 client is {v['p50_ms']:.2f} ms against the floor's "
            f"{f['p50_ms']:.2f} ms (budget {budget:.2f} ms). Mean stage times inside the "
            "service: " + ", ".join(f"{k} {x:.2f} ms" for k, x in known.items())
            + f"; the remaining {rest:.2f} ms is hand-offs between the event loop, the thread "
            "pool and the batcher thread (the batcher no longer waits for companions when "
            f"traffic is not concurrent, so CBMIR_BATCH_WAIT_MS={wait} costs a lone client "
            "nothing) and the service's own HTTP work (metrics and upload-limit middleware).")
    if sum(known.values()) > budget:
        text += (f" The work alone ({sum(known.values()):.2f} ms) exceeds the budget, so "
                 "removing every wait would not meet the target; the forward pass must get "
                 "cheaper.")
    others = [n for n in svc.get("variants") or {} if n in r]
    if others:
        text += " Variants at 1 client: " + ", ".join(
            f"`{n}` p50 {r[n]['p50_ms']:.2f} ms ({r[n]['cpu_ms_per_request']:.1f} ms CPU/req)"
            for n in others) + f" vs {v['cpu_ms_per_request']:.1f} ms CPU/req by default."
    return text


def _throughput_note(svc: dict[str, Any], sections: dict[str, Any]) -> str | None:
    lv = _levels(svc)
    c = 16 if 16 in lv else max(lv, default=None)
    if c is None:
        return None
    v, f = lv[c]["service"], lv[c]["floor"]
    pipe = {p["batch"]: p for p in svc.get("pipeline", [])}
    text = (f"At {c} clients the service answers {v['throughput_rps']:.0f} req/s using "
            f"{v['cpu_cores']:.2f} cores at {v['cpu_ms_per_request']:.2f} ms CPU per request "
            f"(floor: {f['throughput_rps']:.0f} req/s at {f['cpu_ms_per_request']:.2f} ms CPU "
            f"per request; machine {100 * v['machine_busy']:.0f}% busy).")
    if v["machine_busy"] >= 0.9:
        text += " The machine was saturated: req/s ≈ cores available / CPU per request."
    else:
        text += (" The machine had idle CPU, so the limit is serialisation rather than cores: "
                 "every image goes through the one batcher thread, whose torch/numpy calls "
                 "re-acquire the GIL from the event loop and the thread pool each time.")
    if v.get("mean_batch") is not None:
        text += (f" Forward passes averaged {v['mean_batch']:.1f} images ({v['forward_ms']:.1f}"
                 f" ms each) against batch {min(c, svc['settings']['batch_max_size'])} possible")
        alone = _embed_ms(sections, v["mean_batch"])
        text += (f"; the embedder alone needs ~{alone:.1f} ms for that many." if alone else ".")
    if pipe:
        text += (" In-process the same work takes " + ", ".join(
            f"{p['ms_per_image']:.2f} ms/img at batch {b}" for b, p in pipe.items()) + " (wall).")
    others = [n for n in svc.get("variants") or {} if n in lv[c]]
    if others:
        text += " Variants: " + ", ".join(
            f"`{n}` {lv[c][n]['throughput_rps']:.0f} req/s at "
            f"{lv[c][n]['cpu_ms_per_request']:.2f} ms CPU/req" for n in others) + "."
    prof = svc.get("profile") or {}
    if prof.get("roles"):
        text += " Profile (cores busy by thread role): " + ", ".join(
            f"{r} {x:.2f}" for r, x in prof["roles"].items()) + "."
    return text


def _embed_ms(sections: dict[str, Any], images: float) -> float | None:
    """In-process frozen-embedder time for ``images`` images at the nearest measured batch
    size not below it."""
    rows = (sections.get("embedder") or {}).get("by_batch", [])
    fit = [r for r in rows if r["batch"] >= images] or rows
    if not fit:
        return None
    r = min(fit, key=lambda r: r["batch"])
    return 1e3 * images / r["frozen_img_s"]


def _omp_note(sections: dict[str, Any]) -> str | None:
    emb = sections.get("embedder") or {}
    rows = {r["batch"]: r for r in emb.get("by_batch", [])}
    if not rows:
        return None
    pairs = ", ".join(f"batch {b}: {r['frozen_img_s']:.0f} vs {r['frozen_1thread_img_s']:.0f}"
                      for b, r in rows.items())
    text = f"Embedder img/s with {emb.get('torch_threads')} torch threads vs 1 thread ({pairs})."
    if sum(r["frozen_1thread_img_s"] > r["frozen_img_s"] for r in rows.values()) > len(rows) / 2:
        text += (" One thread won: with other processes on the cores, every OpenMP parallel "
                 "region waits for a descheduled worker thread (FAISS likewise: see the *1 thr* "
                 "columns of the search table).")
    return text


def _recall_note(sections: dict[str, Any]) -> str | None:
    sweep = (sections.get("scale") or {}).get("nprobe_sweep") or []
    ok = [r for r in sweep if r["recall_at_k"] >= 0.95]
    default = next((r for r in sweep if r["default"]), None)
    if default is None or default["recall_at_k"] >= 0.95:
        return None
    if ok:
        best = min(ok, key=lambda r: r["nprobe"])
        return (f"IVF recall@10 at the default nprobe ({default['nprobe']}) is "
                f"{default['recall_at_k']:.3f}; nprobe {best['nprobe']} reaches "
                f"{best['recall_at_k']:.3f} at {best['ms_per_query']:.2f} ms/query.")
    return (f"IVF recall@10 stays below 0.95 up to nprobe {sweep[-1]['nprobe']} "
            f"({sweep[-1]['recall_at_k']:.3f}).")


def notes(sections: dict[str, Any], targets: list[dict[str, Any]]) -> list[str]:
    missed = {t["id"] for t in targets if t["passed"] is False}
    svc = sections.get("service") or {}
    out: list[str | None] = []
    if "p50_vs_floor" in missed:
        out.append(_p50_note(svc))
    if {"search_vs_pipeline", "rps_vs_floor"} & missed:
        out.append(_throughput_note(svc, sections))
    if "index_vs_local" in missed:
        h, loc = svc["ingest_http"], svc["ingest_local"]
        out.append(
            f"/index ingests {h['images_per_s']:.0f} img/s against {loc['images_per_s']:.0f} "
            "in-process (one call at a time): each request also pays multipart parsing, the "
            "hops to the thread pool and batcher, and its own fsyncs of originals and SQLite "
            "commit, while the HTTP clients compete for the same cores.")
    if {"embedder_256_rate", "embedder_256_fraction"} & missed:
        out.append(_omp_note(sections))
    if any(t.startswith("scale_search") for t in missed):
        out.append(_recall_note(sections))
    scale = sections.get("scale") or {}
    if "scale_rss" in missed and "probe" in scale:
        p = scale["probe"]
        out.append(f"The index costs {p['index_rss_over_raw']:.2f}× the raw vectors in RSS "
                   f"({p['index_rss_bytes'] / 2**20:.0f} MiB).")
    return [n for n in out if n]
