"""Property-based fuzzing of every operation in the app's own OpenAPI schema (Schemathesis 4).

Bounded and reproducible: a fixed number of examples per operation, derandomized, no
example database. Every answer must be a non-5xx that conforms to the schema: a declared
status code, a declared content type, a body matching the declared model. Multipart file
bodies are mostly junk, so 4xx answers are expected; what fails is a 5xx or an answer the
schema does not declare.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from conftest import index_bytes, png_bytes
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.config import Settings
from app.main import create_app

MAX_EXAMPLES = 25
KEY = "fuzz-key-0123456789"
AUTH = {"X-API-Key": KEY}
# Invalid requests must be refused with one of these: 413 (too many files, too large) is
# a refusal too, which Schemathesis's default list lacks.
REFUSALS = ["400", "401", "404", "413", "415", "422"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
)
READY_TIMEOUT_S = 60


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> FastAPI:
    # Every operation but /health and /metrics declares the X-API-Key scheme: fuzz the
    # configuration where that holds (so Schemathesis's auth checks apply too).
    return create_app(make_settings(max_upload_mb=1, max_files=4, api_key=KEY,
                                    api_key_for_reads=True))


@pytest.fixture
def api_schema(app: FastAPI) -> schemathesis.schemas.BaseSchema:
    """The schema, read from the running app. ``from_asgi`` starts the app's lifespan (so
    loading starts); Schemathesis's pytest plugin ends it when the test ends."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    assert app.state.loader.done.wait(READY_TIMEOUT_S), "service did not load in time"
    # A few stored images, so ids and searches have something to find. (Not `with`: the
    # running lifespan is Schemathesis's and must not be started twice.)
    index_bytes(TestClient(app, headers=AUTH), [png_bytes(i) for i in range(1, 5)])
    return schema


# The operations the API declares; a new one must be added here (and is then fuzzed).
OPERATIONS = [
    ("GET", "/health"), ("POST", "/index"), ("POST", "/search"), ("GET", "/images/{item_id}"),
    ("DELETE", "/images/{item_id}"), ("GET", "/metrics"),
    ("GET", "/images"), ("GET", "/images/{item_id}/info"), ("PATCH", "/images/{item_id}"),
    ("GET", "/images/{item_id}/thumbnail"), ("GET", "/images/{item_id}/similar"),
    ("POST", "/render"), ("DELETE", "/images"),
]
# Negative data (values the schema forbids) only where an operation has parameters.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if p not in ("/health", "/metrics")
]


def test_every_declared_operation_is_fuzzed(app: FastAPI) -> None:
    declared = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert declared == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_server_error_and_answers_conform_to_the_schema(
    api_schema: schemathesis.schemas.BaseSchema, method: str, path: str, mode: GenerationMode,
) -> None:
    # (Schemathesis's own pytest plugin, `from_fixture(...).parametrize()`, does not run
    # under pytest 9; a plain Hypothesis test over each operation's strategy does the same.)
    operation = api_schema[path][method]
    sent: list[schemathesis.Case] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        sent.append(case)
        # Schema-valid random bytes are not a decodable image: a 415/422 for them is
        # correct, so "positive data must be accepted" does not hold for upload bodies.
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    fuzz()
    print(f"fuzz: {method} {path} {mode.value}: {len(sent)} examples, no 5xx, all conform")
