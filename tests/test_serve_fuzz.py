"""`eurosat serve` fuzzed from its own OpenAPI description (schemathesis, in-process over ASGI): whatever
a generated request holds (files, forms, queries, headers), the server answers it without a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.serving.app import Limits, create_app, load_model


@pytest.fixture(scope="module")
def served_app(map_model: Path) -> Iterator[object]:
    # Small limits, so that generated requests reach every refusal quickly; the lifespan starts the batcher.
    app = create_app(
        load_model(ModelOptions(map_model, views=1)),
        Limits(maps_waiting=0),
        token="s3cret",
        allowed_hosts=["testserver"],
    )
    with TestClient(app):
        yield app


def test_no_generated_request_gets_a_server_error(served_app: object) -> None:
    import torch

    # A library loaded in this process sets flush-to-zero (built with -ffast-math); Hypothesis then
    # refuses to generate floats (the form's offset, nodata). Subnormals back on, for the fuzzing only.
    torch.set_flush_denormal(False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", served_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/map", "/maps/{map_id}/{name}", "/health"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def answered_without_server_error(case: schemathesis.Case) -> None:
            for headers in ({}, {"Authorization": "Bearer s3cret"}):  # refused at the door, and let in
                response = case.call(headers=headers)
                assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"

        answered_without_server_error()
