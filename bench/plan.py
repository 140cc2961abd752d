"""What a run measures: the sizes of the default and quick plans, and the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

SECTIONS = ("matmul", "embedder", "search", "service", "scale")
APPROX_MIN_SIZE = 1_000  # per label: makes the approximate index approximate from 10k items


@dataclass(frozen=True)
class Plan:
    """Sizes of one run. The default fits ~10 minutes on 2 busy cores; quick ~30 s."""

    matmul_repeats: int = 5
    batch_sizes: tuple[int, ...] = (1, 8, 32, 256)
    embed_min_images: int = 256
    repeats: int = 3
    gallery_images: int = 3000
    queries: int = 300
    search_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    hnsw_max: int = 100_000
    levels: tuple[int, ...] = (1, 4, 16, 64)
    seconds: int = 4
    ingest_images: int = 512  # per side (HTTP and in-process), plus one warm-up request
    pipeline_images: int = 256
    scale_n: int = 1_000_000
    scale_service: bool = True
    seed_demo: bool = True
    realistic: bool = True  # query kinds, large-upload memory, latency during a snapshot
    spawn_early: bool = False
    max_s_per_point: float = 2.0
    profile_seconds: int = 8  # py-spy on the service after the levels, when installed
    warmup: int = 2  # untimed calls before each timing
    http_warmup_s: int = 1  # load on each server before the levels
    # Variant services run beside the default one (name -> extra environment; WORKERS=N is
    # passed as --workers N): settings tried without a code change, under the same load.
    variants: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "service-omp1": {"OMP_NUM_THREADS": "1"},
        "service-wait0": {"CBMIR_BATCH_WAIT_MS": "0"},
        "service-workers2": {"WORKERS": "2"},  # cbmir serve --workers 2 (not a variable)
    })


# Quick: no HNSW, no demo seeding (the gallery is what /index ingests), no variant service,
# no service start on the scale data dir; every other code path runs.
QUICK = Plan(matmul_repeats=3, embed_min_images=16, repeats=1, gallery_images=240, queries=30,
             search_sizes=(10_000,), hnsw_max=0, levels=(1, 4), seconds=1, ingest_images=32,
             pipeline_images=16, scale_n=10_000, scale_service=False, seed_demo=False,
             variants={}, realistic=False, spawn_early=True, max_s_per_point=0.5, profile_seconds=0,
             warmup=1, http_warmup_s=0)


def parse_args(argv: Sequence[str] | None, doc: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a ~30 s smoke test")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--model-dir", type=Path,
                   help="default: $CBMIR_MODEL_DIR, else the default model (models/multimodal)")
    p.add_argument("--data", type=Path, help="MedNIST folder with split.csv (default: "
                   "../shared/data/mednist; absent: demo images and synthetic vectors)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--sizes", type=int, nargs="+", help="search gallery sizes")
    p.add_argument("--scale-size", type=int, help="items for the scale section")
    p.add_argument("--levels", type=int, nargs="+", help="concurrent clients for /search")
    p.add_argument("--seconds", type=int, help="seconds per load level")
    p.add_argument("--variant", action="append", metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                   help="a variant service run beside the default one (repeatable; replaces "
                   "the default variants; 'none' for no variant)")
    p.add_argument("--no-scale-service", action="store_true",
                   help="skip starting the real service on the scale-size data dir")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    p.add_argument("--from-json", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: re-check targets and re-render RESULTS.md (in --out) "
                   "from an earlier results.json")
    return p.parse_args(argv)


def make_plan(a: argparse.Namespace) -> Plan:
    plan = QUICK if a.quick else Plan()
    if a.sizes:
        plan = replace(plan, search_sizes=tuple(sorted(a.sizes)))
    if a.scale_size:
        plan = replace(plan, scale_n=a.scale_size)
    if a.levels:
        plan = replace(plan, levels=tuple(a.levels))
    if a.seconds:
        plan = replace(plan, seconds=a.seconds)
    if a.no_scale_service:
        plan = replace(plan, scale_service=False)
    if a.variant:
        plan = replace(plan, variants=_variants(a.variant))
    return plan


def _variants(specs: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        if spec == "none":
            continue
        name, _, assignments = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in assignments.split(",") if "=" in kv)
        if not name or not env or name in ("service", "floor"):
            raise SystemExit(f"bench: bad --variant {spec!r} (want NAME:VAR=VALUE[,...])")
        out[name] = env
    return out
