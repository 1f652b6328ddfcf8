"""Property-based fuzz of the HTTP API from its own OpenAPI document: no 5xx, every response matches the schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.broker import create_topics
from tests.brokers import Cluster
from tests.procs import ProcessorProc, new_processor, processor_env

# positive_data_acceptance is left out on purpose: a schema-valid body (any base64 string) need not be an image.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tansu: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessorProc]:
    topics = [f"{p}-{uuid.uuid4().hex[:12]}" for p in ("in", "out", "dlq")]
    create_topics(tansu.bootstrap, topics, 1)
    env = processor_env(tansu.bootstrap, *topics, f"g-{uuid.uuid4().hex[:12]}", max_image_bytes="1048576")
    proc = new_processor(env, tmp_path_factory.mktemp("fuzz"), "fuzz").start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop(timeout_s=40)


OPERATIONS = [("/detect", "POST"), ("/detect/batch", "POST"), ("/health", "GET"), ("/healthz", "GET"),
              ("/readyz", "GET")]  # fmt: skip


def test_the_document_lists_exactly_the_fuzzed_operations(fuzzed: ProcessorProc) -> None:
    schema = schemathesis.openapi.from_url(fuzzed.url("/openapi.json"))
    found = sorted((op.ok().path, op.ok().method.upper()) for op in schema.get_all_operations())
    assert found == sorted(OPERATIONS)


# Negative (schema-violating) data only where there is a body to break: the GETs take no input at all.
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + [
    ("/detect", "POST", GenerationMode.NEGATIVE),
    ("/detect/batch", "POST", GenerationMode.NEGATIVE),
]


# schemathesis.pytest.from_fixture needs pytest internals that pytest 9 removed: drive hypothesis directly.
@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_api_never_answers_5xx_and_always_matches_its_openapi_document(
    fuzzed: ProcessorProc, path: str, method: str, mode: GenerationMode
) -> None:
    operation = schemathesis.openapi.from_url(fuzzed.url("/openapi.json"))[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
    def fuzz(case: Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    fuzz()
