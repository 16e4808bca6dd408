"""The OpenAPI documents the functions generate describe every answer a caller can get."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import load_function

ERROR_STATUSES = {
    ("events", "post", "/v1/identify"): {"413", "415", "422", "503"},
    ("events", "post", "/v1/batch"): {"413", "415", "422", "503"},
    ("events", "delete", "/v1/customers/{id}"): {"413", "415", "422", "503"},
    ("events", "post", "/v1/customers"): {"400", "415", "422", "429", "502", "503", "504"},
    ("events", "get", "/v1/segments"): {"429", "502", "503", "504"},
    ("email", "post", "/v1/send/email"): {"400", "409", "413", "415", "422", "503"},
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
