"""The OpenAPI documents the functions generate describe every answer a caller can get."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import load_function

ERROR_STATUSES = {
    ("events", "post", "/v1/identify"): {"400", "413", "415", "503"},
    ("events", "post", "/v1/batch"): {"400", "413", "415", "503"},
    ("events", "delete", "/v1/customers/{id}"): {"413", "415", "422", "503"},
    ("events", "post", "/v1/customers"): {"400", "415", "422", "429", "502", "503", "504"},
    ("events", "get", "/v1/segments"): {"429", "502", "503", "504"},
    ("email", "post", "/v1/send/email"): {"400", "403", "409", "413", "415", "422", "503"},
    ("email", "post", "/v1/send/push"): {"400", "409", "413", "415", "422", "503"},
    ("email", "post", "/v1/send/sms"): {"400", "409", "413", "415", "422", "503"},
}


def document(function: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(load_function(function).app.get_openapi_json_schema())
    return loaded


@pytest.mark.parametrize(("function", "method", "path"), sorted(ERROR_STATUSES))
def test_openapi_documents_success_and_each_error_as_code_and_message(
    function: str, method: str, path: str
) -> None:
    # GIVEN the OpenAPI document a function generates
    spec = document(function)

    # WHEN we read one route's responses
    responses = spec["paths"][path][method]["responses"]

    # THEN success is documented, and every error answer it can give uses the {code, message} body
    assert "200" in responses
    assert ERROR_STATUSES[(function, method, path)] <= set(responses)
    error_schema = spec["components"]["schemas"]["ErrorBody"]
    assert {"code", "message"} <= set(error_schema["required"])
    for status in ERROR_STATUSES[(function, method, path)]:
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorBody"


@pytest.mark.parametrize("function", ["events", "email"])
def test_openapi_documents_every_route_the_function_serves(function: str) -> None:
    # GIVEN the routes a function's resolver serves
    app = load_function(function).app
    served = {
        (route.method.lower(), route.path.replace("<", "{").replace(">", "}"))
        for route in app._static_routes + app._dynamic_routes
    }

    # WHEN / THEN each one is in its OpenAPI document
    paths = document(function)["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert served - {("get", "/swagger")} <= documented
    assert len(served) >= (3 if function == "email" else 10)


def test_openapi_error_table_covers_every_transactional_route() -> None:
    paths = document("email")["paths"]
    assert {("email", m, p) for p, item in paths.items() for m in item} <= set(ERROR_STATUSES)


def test_openapi_replay_header_and_deferred_answers_are_documented() -> None:
    # GIVEN the transactional routes' documents
    paths = document("email")["paths"]
    for channel in ("email", "push", "sms"):
        responses = paths[f"/v1/send/{channel}"]["post"]["responses"]
        # THEN a replay, a deferral and the Idempotency-Key header are described
        assert "Idempotent-Replayed" in responses["200"]["description"]
        assert "202" in responses
        names = {p["name"].lower() for p in paths[f"/v1/send/{channel}"]["post"]["parameters"]}
        assert "idempotency-key" in names
