"""Fuzzing: schemathesis generates requests for every operation of ``/openapi.json`` and sends them, with a
valid key, to a real ``twofold serve``. No answer may be a 5xx, and every answer must match the schema
(status code documented, content type, body). The server under fuzz has its own database schema and a broker
prefix no worker consumes, so the jobs the fuzzer creates never run."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.conftest import RelStack
from tests.services import temp_schema

pytestmark = [pytest.mark.services, pytest.mark.slow]

MIN_REQUESTS = 1000
EXAMPLES_PER_OPERATION = 90
CALLS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_target(rel: RelStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second API server on a fresh schema whose enqueued stages nobody runs."""
    with temp_schema(prefix="tf_fuzz") as db_url:
        url, key = rel.spawn_api(
            "api-fuzz",
            database_url=db_url,
            broker_key_prefix=f"tf-fuzz-{uuid.uuid4().hex[:8]}:",
            artifacts_url=str(tmp_path_factory.mktemp("fuzz-artifacts")),
            max_upload_bytes="65536",
        )
        try:
            yield {"url": url, "headers": {"Authorization": f"Bearer {key}"}}
        finally:
            rel.kill("api-fuzz")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_generated_requests_get_no_5xx_and_answers_match_the_schema(fuzz_target: dict[str, Any]) -> None:
    url, headers = fuzz_target["url"], fuzz_target["headers"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid and invalid inputs

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION // 2,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def send(case: Any) -> None:
                CALLS[f"{case.method} {case.path}"] += 1
                case.call_and_validate(base_url=url, headers=headers, timeout=30, checks=CHECKS)

            try:
                send()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
                continue
    total = sum(CALLS.values())
    print(f"fuzzing: {total} requests over {len(operations)} operations: {dict(CALLS)}")
    assert total >= MIN_REQUESTS, CALLS
