"""Entry point: ``python -m bench.run [--quick] [--out DIR] [--sections ...]``.

Writes ``RESULTS.md`` and ``results.json`` to ``--out`` (default: this folder). Sections:
matmul, embedder, search, service, scale (default: all). A failing section is recorded
and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import loadavg, round_floats
from bench.data import ImageSets, load_sets
from bench.diagnose import notes
from bench.http import wrk_path
from bench.machine import machine_info, matmul_ceiling
from bench.plan import APPROX_MIN_SIZE, Plan, make_plan, parse_args
from bench.profile import py_spy
from bench.report import keep_marked_sections, render
from bench.targets import evaluate

log = logging.getLogger("bench")

def _model_dir(a: argparse.Namespace) -> Path:
    import os

    from models import DEFAULT_MODEL_DIR

    path = a.model_dir or Path(os.environ.get("CBMIR_MODEL_DIR") or DEFAULT_MODEL_DIR)
    if not (path / "config.json").is_file():
        raise SystemExit(f"bench: no model in {path} (train one, or pass --model-dir)")
    return path.resolve()


def _tool(choice: str) -> str:
    if choice == "auto":
        choice = "wrk" if wrk_path() else "python"
        if choice == "python":
            log.warning("wrk not found: using the Python load generator (it competes with the "
                        "server for CPU; install wrk for better numbers)")
    elif choice == "wrk" and not wrk_path():
        raise SystemExit("bench: --loadgen wrk but wrk is not installed")
    return choice


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the suite and writes the reports; returns the results (as in results.json)."""
    a = parse_args(argv, __doc__)
    if a.from_json:
        return _rerender(a.from_json, a.out)
    t_start = time.perf_counter()
    plan = make_plan(a)
    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.run", *(shlex.quote(x) for x in args)])
    model_dir = _model_dir(a)
    tool = _tool(a.loadgen)
    results: dict[str, Any] = {"machine": machine_info(command), "quick": a.quick,
                               "plan": vars(plan),
                               "model_dir": str(model_dir), "sections": {}}
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cbmir-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            _run_sections(a.sections, plan, model_dir, a.data, tool, work, a.out, results, stack)
    finally:
        if a.keep_work:
            log.info("work folder kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["targets"] = evaluate(results["sections"])
    results["notes"] = notes(results["sections"], results["targets"])
    results["machine"]["loadavg_at_end"] = loadavg()
    results["wall_s"] = time.perf_counter() - t_start
    results = round_floats(results)
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (a.out / "RESULTS.md").write_text(keep_marked_sections(render(results), a.out / "RESULTS.md"))
    log.info("wrote %s and %s in %.0fs", a.out / "RESULTS.md", a.out / "results.json",
             results["wall_s"])
    return results


def _rerender(path: Path, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(path.read_text())
    results["targets"] = round_floats(evaluate(results["sections"]))
    results["notes"] = notes(results["sections"], results["targets"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "RESULTS.md").write_text(keep_marked_sections(render(results), out / "RESULTS.md"))
    log.info("re-rendered %s from %s", out / "RESULTS.md", path)
    return results


def _run_sections(wanted: list[str], plan: Plan, model_dir: Path, data: Path | None, tool: str,
                  work: Path, out: Path, results: dict[str, Any], stack: contextlib.ExitStack
                  ) -> None:
    from bench.service import ServiceConfig, bench_service, spawn_all
    from models.embed import Embedder

    sec: dict[str, Any] = results["sections"]
    service_cfg = ServiceConfig(list(plan.levels), plan.seconds, tool, repeats=plan.repeats,
                                pipeline_images=plan.pipeline_images, seed_demo=plan.seed_demo,
                                variants=plan.variants, profile_dir=out,
                                warmup_s=plan.http_warmup_s, kinds=plan.realistic,
                                profile_seconds=plan.profile_seconds if py_spy() else 0)
    running = None
    if plan.spawn_early and "service" in wanted:
        # Their start-up (seconds of imports and tracing) overlaps the in-process sections,
        # which it slows down: only for the quick smoke run.
        running = stack.enter_context(spawn_all(model_dir, service_cfg, work))
    embedder = Embedder.load(model_dir, "cpu")
    sets: ImageSets = load_sets(data, plan.gallery_images, plan.queries,
                                2 * (plan.ingest_images + 16))
    results["images"] = {"source": sets.source, "gallery": len(sets.gallery),
                         "queries": len(sets.queries), "fresh": len(sets.fresh)}
    state: dict[str, Any] = {}

    def guarded(name: str, fn: Callable[[], Any]) -> None:
        if name not in wanted:
            return
        log.info("== section %s (load %.1f)", name, loadavg())
        t0 = time.perf_counter()
        try:
            sec[name] = fn()
            sec[name]["section_s"] = time.perf_counter() - t0
        except Exception as e:  # recorded in the report; the other sections still run
            log.exception("section %s failed", name)
            sec[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}

    guarded("matmul", lambda: matmul_ceiling(2048, plan.matmul_repeats, plan.warmup))

    def embedder_section() -> dict[str, Any]:
        from bench.common import thread_limit
        from bench.embedder import bench_embedder, prepare_all

        images = prepare_all(embedder, [im.data for im in sets.gallery[:256]])
        mm = sec.get("matmul", {}).get("gflops_median")
        torchscript = Embedder.load(model_dir, "cpu", onnx=False)
        with thread_limit(torch_threads=1):  # the service's setting (CBMIR_TORCH_THREADS)
            one_thread = Embedder.load(model_dir, "cpu")
        res = bench_embedder(embedder, images, list(plan.batch_sizes), plan.embed_min_images,
                             plan.repeats, mm, plan.max_s_per_point, plan.warmup,
                             torchscript=torchscript, one_thread=one_thread)
        if plan.realistic:
            from app.service.decoding import pixel_cap_for
            from bench.data import DEMO_DIR
            from bench.realistic import cap_fidelity

            res["cap_fidelity"] = cap_fidelity(embedder, DEMO_DIR,
                                               pixel_cap_for(embedder.config))
        return res

    guarded("embedder", embedder_section)

    def vector_source() -> Any:
        from bench import vectors

        if "src" not in state:
            state["src"] = (vectors.from_images(embedder, sets.gallery, sets.queries)
                            if sets.source == "mednist" else
                            vectors.synthetic(embedder.embedding_dim, embedder.class_names,
                                              plan.gallery_images, plan.queries))
        return state["src"]

    def search_section() -> dict[str, Any]:
        from bench.search import bench_search

        sizes = sorted(set(plan.search_sizes) | ({plan.scale_n} if "scale" in wanted else set()))
        res, state["scale_index"] = bench_search(
            vector_source(), sizes, plan.hnsw_max, 10, plan.repeats, APPROX_MIN_SIZE,
            embedder.config.fingerprint, plan.max_s_per_point, keep=plan.scale_n)
        return res

    guarded("search", search_section)

    def service_section() -> dict[str, Any]:
        return bench_service(model_dir, sets, service_cfg, work, running)

    guarded("service", service_section)

    def scale_section() -> dict[str, Any]:
        from bench.scale import bench_scale

        if state.get("scale_index") is None:  # search not run (or failed): build it here
            from bench.search import bench_search

            _, state["scale_index"] = bench_search(
                vector_source(), [plan.scale_n], 0, 10, plan.repeats, APPROX_MIN_SIZE,
                embedder.config.fingerprint, plan.max_s_per_point, keep=plan.scale_n)
        return bench_scale(vector_source(), plan.scale_n, state.pop("scale_index"), embedder,
                           model_dir, work, APPROX_MIN_SIZE, with_service=plan.scale_service,
                           tool=tool, image=sets.queries[0].data, seconds=max(3, plan.seconds),
                           repeats=plan.repeats, max_s=plan.max_s_per_point)

    guarded("scale", scale_section)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = run(argv)
    failed = [k for k, v in results["sections"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
