"""What one ``/metrics`` scrape of ``cbmir serve --workers N`` says, for the tests of both
backends (``test_serve_workers``, ``test_pg_replicas``): requests of one route, sent on
new connections until the workers wanted have answered, then scrapes until each of them
has answered one. Loops are bounded (``ROUNDS``)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

INFO_ROUTE = "/images/{item_id}/info"  # called by no other test of those modules: exact
ROUNDS = 40  # bounded loops: enough requests for the kernel to reach both workers


def _reached(seen: set[str], pids: set[str] | int) -> bool:
    """``pids``: those workers, or that many of them."""
    return pids <= seen if isinstance(pids, set) else len(seen) >= pids


def scrape(url: str) -> tuple[str, dict[str, float], set[str]]:
    """One ``/metrics`` scrape: the worker that answered, GET requests of ``INFO_ROUTE``
    by status, and the names of all the samples."""
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    counts: dict[str, float] = {}
    names = set()
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            names.add(sample.name)
            if (sample.name == "cbmir_http_requests_total" and sample.labels["method"] == "GET"
                    and sample.labels["route"] == INFO_ROUTE):
                counts[sample.labels["status"]] = sample.value
    return r.headers["x-cbmir-worker"], counts, names


def counted(url: str, pids: set[str] | int) -> dict[str, dict[str, float]]:
    """What a scrape answered by each worker in ``pids`` (or by that many) says of
    ``INFO_ROUTE``."""
    out: dict[str, dict[str, float]] = {}
    for _ in range(ROUNDS):
        pid, counts, _ = scrape(url)
        out[pid] = counts
        if _reached(set(out), pids):
            break
    assert _reached(set(out), pids), (pids, set(out))
    return out


def ask_info(url: str, item_id: int, pids: set[str] | int) -> dict[str, int]:
    """GET the item's info on new connections until each worker in ``pids`` (or that many)
    has answered (at least 10 requests, at most ``ROUNDS``); how many each one answered."""
    answered: dict[str, int] = {}
    for n in range(ROUNDS):
        r = httpx.get(f"{url}/images/{item_id}/info", timeout=10)
        assert r.status_code == 200, r.text
        pid = r.headers["x-cbmir-worker"]
        answered[pid] = answered.get(pid, 0) + 1
        if n >= 9 and _reached(set(answered), pids):
            break
    assert _reached(set(answered), pids), answered
    return answered
