"""RESULTS.md from a run's results (the same data as results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 2**20


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines + [""]


def _machine(m: dict[str, Any], wall_s: float, quick: bool) -> list[str]:
    return [
        "# cbmir performance results" + (" (--quick smoke run: tiny sizes)" if quick else ""),
        "",
        f"- Command: `{m['command']}` ({wall_s:.0f} s wall)",
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu_model']}, {m['cores_usable']} usable cores, torch threads "
        f"{m['torch_threads']}; device {m['device']}",
        f"- Versions: python {m['python']}, torch {m['torch']}, faiss {m['faiss']}, numpy "
        f"{m['numpy']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']}",
        f"- Load average at start {m['loadavg_at_start']:.1f}, at end "
        f"{m.get('loadavg_at_end', float('nan')):.1f} (on a shared machine absolute times drift; "
        "compare the side-by-side ratios)",
        "",
    ]


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    def status(r: dict[str, Any]) -> str:
        return {True: "PASS", False: "**MISS**", None: "n/a"}[r["passed"]]

    body = [[r["target"], f"{_f(r['value'], 3)} {r['unit']}", _f(r["threshold"], 2), status(r),
             r["margin"] + (f"; {r['note']}" if r["note"] else "")] for r in rows]
    return ["## Targets", "", *_table(["target", "measured", "threshold", "", "margin"], body)]


def _embedder(e: dict[str, Any], mm: dict[str, Any] | None) -> list[str]:
    out = ["## In-process ceilings", ""]
    if mm:
        out += [f"fp32 matmul {mm['n']}² on {mm['threads']} threads: **{mm['gflops_median']:.1f} "
                f"GFLOP/s** (median of {mm['repeats']}).", ""]
    if not e:
        return out
    m = e["model"]
    out += [f"Embedder `{m['name']}` ({m['in_channels']}×{m['image_size']}² input, widths "
            f"{m['widths']}, fc {m['fc_dims']}): {e['flops_per_image'] / 1e6:.1f} MFLOP/image. "
            f"Served runner (*served*): {e.get('runner', 'torchscript')}; *TorchScript*: the "
            "frozen trace it replaced.", ""]
    rows = [[r["batch"], _f(r["frozen_img_s"], 0), _f(r.get("torchscript_img_s", float("nan")), 0),
             _f(r["eager_img_s"], 0), _f(r["frozen_over_eager"], 2), _f(r["frozen_gflops"]),
             _f(100 * r.get("frozen_fraction_of_matmul", float("nan"))),
             _f(r["frozen_1thread_img_s"], 0)] for r in e["by_batch"]]
    out += _table(["batch", "served img/s", "TorchScript img/s", "eager img/s",
                   "served/eager", "served GFLOP/s", "% of matmul",
                   "served, 1 thread img/s"], rows)
    if e.get("cap_fidelity"):
        out += ["Reduced on read above the pixel cap: cosine between the descriptors of each "
                "image decoded with and without the cap (same predicted class: "
                f"{sum(r['same_class'] for r in e['cap_fidelity'])} of "
                f"{len(e['cap_fidelity'])}).", ""]
        out += _table(["image", "cosine"], [[r["image"], _f(r["cosine"], 5)]
                                            for r in e["cap_fidelity"]])
    return out


def _search(s: dict[str, Any]) -> list[str]:
    v = s["vectors"]
    out = ["## Index search", "",
           f"Vectors: {v['kind']} (dim {v['dim']}, {v['base_vectors']} base vectors over "
           f"{len(v['classes'])} classes, noise norm {v['noise_norm']:.3f} = median distance "
           f"between nearest base vectors); {v['queries']} held-out "
           f"queries; `predicted` = the model's predicted class. Approximate sub-indexes are "
           f"forced from {s['approx_min_size']:,} vectors per label (the service's default "
           "CBMIR_APPROX_MIN_SIZE is 20,000). Times are ms per query; *single* = q=1 per call "
           "(what the service does; median of repeats), *1 thr* = the same with FAISS on one "
           "OpenMP thread, *batched* = all queries in one call.", ""]
    rows = []
    for size in s["by_size"]:
        for kind, r in size["by_kind"].items():
            a, p = r["all"], r["predicted"]
            rows.append([f"{size['n']:,}", kind, _f(r["build_s"], 2), _f(a["ms_per_query"], 3),
                         _f(a["ms_per_query_1thread"], 3), _f(a["p99_ms"], 3),
                         _f(a["batched_ms_per_query"], 3), _f(a["recall_at_k"], 3),
                         _f(p["ms_per_query"], 3), _f(p["ms_per_query_1thread"], 3),
                         _f(p["p99_ms"], 3), _f(p["batched_ms_per_query"], 3),
                         _f(p["recall_at_k"], 3)])
    return out + _table(["n", "index", "build s", "all single", "all 1 thr", "all p99",
                         "all batched", "all R@10", "pred single", "pred 1 thr", "pred p99",
                         "pred batched", "pred R@10"], rows)


def _service(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    variants = list(s.get("variants") or {})
    seeded = "demo seeded + ingested" if s["seed_demo"] else "ingested only"
    out = ["## Service vs HTTP floor", "",
           f"Load generator: **{s['tool']}** ({s['seconds_per_level']} s per level, closed loop, "
           f"loopback; it shares the CPU with the server). `POST /search?k={s['k']}&scope="
           f"{s['scope']}` with one real image ({s['query_image']}); gallery {s['gallery_size']}"
           f" items ({seeded}). `cbmir serve` healthy {s['service_start_s']:.1f} s after spawn"
           + (" (spawned at the start of the run)" if s.get("spawned_early") else "")
           + f". Batching: max {st['batch_max_size']}, wait {st['batch_wait_ms']} ms; log "
           f"level {st['log_level']}."
           + "".join(f" Variant `{v}`: the same service with environment "
                     f"`{' '.join(f'{k}={x}' for k, x in s['variants'][v].items())}`."
                     for v in variants),
           "",
           "Latencies in ms. *CPU ms/req*: the server process's CPU time per answered request "
           "(all its threads); *cores*: its average CPU use; *busy*: the whole machine's. "
           "*batch*, *forward*, *decode*, *search*: means from the service's own /metrics "
           "over the run (images per CNN forward pass, ms per pass, ms per request stage).", ""]
    rows = []
    for r in s["levels"]:
        for name in ("service", "floor", *variants):
            v = r[name]
            rows.append([r["concurrency"], name, _f(v["throughput_rps"], 0), _f(v["p50_ms"], 2),
                         _f(v["p95_ms"], 2), _f(v["p99_ms"], 2), _f(v["cpu_ms_per_request"], 2),
                         _f(v["cpu_cores"], 2), _f(v["machine_busy"], 2),
                         _f(v.get("mean_batch"), 1), _f(v.get("forward_ms"), 2),
                         _f(v.get("decode_ms"), 2), _f(v.get("search_ms"), 2), v["errors"]])
    out += _table(["clients", "server", "req/s", "p50", "p95", "p99", "CPU ms/req", "cores",
                   "busy", "batch", "forward", "decode", "search", "errors"], rows)
    ratios = [[r["concurrency"],
               _f(r["service"]["throughput_rps"] / r["floor"]["throughput_rps"], 2),
               _f(r["service"]["p50_ms"] / r["floor"]["p50_ms"], 2), _f(r["loadavg"])]
              for r in s["levels"]]
    out += _table(["clients", "service/floor req/s", "service/floor p50", "load avg"], ratios)
    out += ["In-process pipeline (decode + preprocess + embed + index search + SQLite lookup, "
            "through the app's own functions, on the service's data dir after it stopped):", ""]
    one = {p["batch"]: p for p in s.get("pipeline_1thread", [])}
    prow = [[p["batch"], _f(p["images_per_s"], 0), _f(p["ms_per_image"], 2),
             _f(one.get(p["batch"], {}).get("images_per_s"), 0)] for p in s["pipeline"]]
    out += _table(["batch", "img/s", "ms/img", "img/s with 1 thread (torch + FAISS)"], prow)
    h, loc = s["ingest_http"], s["ingest_local"]
    out += [f"Ingestion of fresh images, {loc['batch']} per request: `POST /index` with "
            f"{s['ingest_clients']} concurrent clients **{h['images_per_s']:.0f} img/s** "
            f"({h['added']} added, {h['duplicates']} duplicates, {h['failed_requests']} failed; "
            f"request p50 {h['request_p50_ms']:.0f} ms) vs in-process `Retriever.ingest_sync` "
            f"**{loc['images_per_s']:.0f} img/s** ({loc['added']} added)."
            + "".join(f" `{v}`: {s[f'ingest_http_{v}']['images_per_s']:.0f} img/s."
                      for v in variants if f"ingest_http_{v}" in s), ""]
    if s.get("profile"):
        out += _profile(s["profile"])
    return out + _kinds(s)


def _kinds(s: dict[str, Any]) -> list[str]:
    if not s.get("kinds"):
        return []
    out = ["### Realistic queries", "",
           "The same `POST /search?k=10&scope=predicted` with each image, the floor given the "
           "same upload, back to back at each level. Images above the pixel cap (2048² for "
           "the 64 px model) are reduced on read.", ""]
    rows = []
    for kind, k in s["kinds"].items():
        for c, r in k["levels"].items():
            v, f = r["service"], r["floor"]
            rows.append([kind if c in (1, "1") else "", k["what"] if c in (1, "1") else "",
                         f"{k['bytes'] / 1e3:,.0f} kB" if c in (1, "1") else "", c,
                         _f(v["p50_ms"], 2), _f(f["p50_ms"], 2), _f(v["throughput_rps"], 0),
                         _f(f["throughput_rps"], 0), v["errors"]])
    out += _table(["kind", "image", "upload", "clients", "service p50", "floor p50",
                   "service req/s", "floor req/s", "errors"], rows)
    m = s.get("memory")
    if m:
        out += [f"**Memory**: {m['requests']} concurrent searches of a {m['image_bytes'] / 1e6:.1f}"
                f" MB 6000×6000 16-bit PNG: statuses {sorted(set(m['statuses']))}, server RSS "
                f"{_f((m['rss_before_bytes'] or 0) / 2**20, 0)} MiB before, peak "
                f"**{_f((m['peak_rss_bytes'] or 0) / 2**20, 0)} MiB** (VmHWM), "
                f"{_f((m['rss_after_bytes'] or 0) / 2**20, 0)} MiB after; decodes reserved at "
                f"most {_f((m['decode_reserved_peak_bytes'] or 0) / 2**20, 0)} MiB at once "
                f"(CBMIR_DECODE_MEMORY_MB); {m['seconds']:.1f} s for all.", ""]
    return out


def _profile(p: dict[str, Any]) -> list[str]:
    if "error" in p:
        return [f"Profile: {p['error']}", ""]
    out = [f"### Where the service's CPU goes (py-spy, {p['seconds']} s at {p['concurrency']} "
           f"clients, {p['rate_hz']} Hz; raw stacks in `{p['raw_stacks']}`)", "",
           "Shares are of one core (1.00 = one core busy for the whole run). Python frames "
           "only: native OpenMP worker threads are not sampled, and a thread blocked on a lock "
           "(e.g. `Store.get_many`'s `with self._lock`) can count as busy.", ""]
    out += _table(["thread role", "busy share"],
                  [[r, _f(v, 2)] for r, v in p["roles"].items()])
    out += _table(["top frames (self time)", "thread role", "share"],
                  [[f"`{t['frame']}`", t["role"], _f(t["share"], 3)] for t in p["top_frames"]])
    return out


def _scale(s: dict[str, Any]) -> list[str]:
    p = s["probe"]
    out = ["## Scale", "",
           f"{s['n']:,} items, dim {s['dim']}, {s['index_type']} index: raw float32 vectors "
           f"{s['raw_vectors_bytes'] / MIB:.0f} MiB, model weights "
           f"{s['model_weights_bytes'] / MIB:.1f} MiB.", "",
           f"- Fresh process (`bench.probe`: load model + `FaissIndex.load`): RSS "
           f"{p['rss_after_index'] / MIB:.0f} MiB = {p['rss_after_model'] / MIB:.0f} MiB with "
           f"the model (torch runtime included) + {p['index_rss_bytes'] / MIB:.0f} MiB for the "
           f"index ({p['index_rss_over_raw']:.2f}× raw); peak {p['peak_rss'] / MIB:.0f} MiB; "
           f"budget {p['budget_bytes'] / MIB:.0f} MiB.",
           f"- Load times: imports {p['import_s']:.1f} s, model {p['model_load_s']:.1f} s, index "
           f"{p['index_load_s']:.1f} s; whole process {p['process_wall_s']:.1f} s.",
           ]
    svc = s.get("service")
    if svc:
        c1 = svc["search_c1"]
        out += [f"- Real service on a data dir with {s['n']:,} stored items (SQLite rows with "
                f"vectors + index snapshot; filled in {svc['fill_store_s']:.0f} s): spawn to "
                f"/health 200 in **{svc['start_to_health_s']:.1f} s**, RSS "
                f"{(svc['rss_bytes'] or 0) / MIB:.0f} MiB; /search (predicted, 1 client) p50 "
                f"{c1['p50_ms']:.1f} ms, p99 {c1['p99_ms']:.1f} ms, {c1['throughput_rps']:.0f} "
                "req/s."]
        d = svc.get("during_snapshot")
        if d and d.get("published"):
            out += [f"- While one write made it snapshot all {s['n']:,} items "
                    f"({d['snapshot_s']:.1f} s from the write to publication)"
                    f", one client searching and one polling "
                    f"/health: /search p50 {d['search']['p50_ms']:.1f} ms, **p99 "
                    f"{d['search']['p99_ms']:.1f} ms** (max {d['search']['max_ms']:.1f}, "
                    f"{d['search']['requests']} requests); /health p50 "
                    f"{d['health']['p50_ms']:.1f} ms, **p99 {d['health']['p99_ms']:.1f} ms** "
                    f"(max {d['health']['max_ms']:.1f}, {d['health']['requests']} requests)."]
    else:
        out += ["- Real service start-up at this size: not run (--quick or --no-scale-service); "
                "the probe's model + index load stands in for it."]
    if s.get("nprobe_sweep"):
        out += ["", "IVF nprobe sweep at this size (predicted scope, single queries):", ""]
        out += _table(["nprobe", "ms/query", "p99 ms", "recall@10"],
                      [[f"{r['nprobe']}" + (" (default)" if r["default"] else ""),
                        _f(r["ms_per_query"], 3), _f(r["p99_ms"], 3), _f(r["recall_at_k"], 3)]
                       for r in s["nprobe_sweep"]])
    return out + [""]


def render(results: dict[str, Any]) -> str:
    # Failed sections hold only their error, listed at the end.
    sec = {k: v for k, v in results["sections"].items() if "error" not in v}
    lines = _machine(results["machine"], results["wall_s"], results["quick"])
    lines += _targets(results["targets"])
    if results.get("notes"):
        lines += ["## Why targets are missed", "", *[f"- {n}" for n in results["notes"]], ""]
    if sec.get("embedder") or sec.get("matmul"):
        lines += _embedder(sec.get("embedder") or {}, sec.get("matmul"))
    if sec.get("search"):
        lines += _search(sec["search"])
    if sec.get("service"):
        lines += _service(sec["service"])
    if sec.get("scale"):
        lines += _scale(sec["scale"])
    errors = {k: v["error"] for k, v in results["sections"].items() if "error" in v}
    if errors:
        lines += ["## Sections that failed", "", *[f"- {k}: `{v}`" for k, v in errors.items()],
                  ""]
    return "\n".join(lines)


KEPT_SECTIONS = ("pg-scale", "rebuild")
"""Sections other commands write between ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->``
markers (``make bench-scale``, ``make bench-rebuild``); a full run keeps them."""


def keep_marked_sections(text: str, old: Path) -> str:
    """``text`` with the marked sections of ``old`` kept at its end, in their order there."""
    prev = old.read_text() if old.is_file() else ""
    for name in KEPT_SECTIONS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in prev and end in prev:
            block = prev[prev.index(begin) : prev.index(end) + len(end)]
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    return text
