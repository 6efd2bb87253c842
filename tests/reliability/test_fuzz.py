"""Fuzzing the OpenAPI schema with schemathesis: whatever a client sends that the schema
describes, the server answers without a 5xx and as its schema says."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from tests.reliability.harness import API_KEY

pytestmark = pytest.mark.slow

# Per operation: enough to reach the limits and odd values, few enough to stay quick.
EXAMPLES_PER_OPERATION = 5
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# The schema is static (it does not depend on the loaded models), so it is taken from an app
# that is built but never started, at collection; the requests go to the running server.
schema = schemathesis.openapi.from_dict(create_app(Settings(api_keys=API_KEY)).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_holds_to_its_schema(case, inprocess_server, figures):
    started = time.perf_counter()
    response = case.call_and_validate(base_url=inprocess_server, checks=CHECKS,
                                      headers={"Authorization": f"Bearer {API_KEY}"})
    seen = figures.setdefault("fuzz", {}).setdefault(case.operation.label, Counter())
    seen[str(response.status_code)] += 1
    seen["seconds"] += round(time.perf_counter() - started, 2)
