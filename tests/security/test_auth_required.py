"""No one gets in without a key: the local stack's API Gateway refuses every route without it.

tests/template already proves the deployed API authenticates every route (the SAM transform with
ApiAuth=API_KEY and AWS_IAM). Here the running local stack, which runs the template's own key
authorizer, is held to the same rule: each route the template declares, called without a key answers
API Gateway's 401, with a wrong one its 403, both in docs/design.md's JSON shape, and never reaches a
function (no queue message, no Customer.io call). The right key passes in each of the three forms
an SDK sends it. ApiAuth=AWS_IAM is not emulated locally (the local stack says so when started that way).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from local_stack import LocalStack, Options
from local_stack.stack import reset_layer_caches
from local_stack.template import ApiRoute

BODIES: dict[str, Any] = {
    "/v1/identify": {"userId": "u1"},
    "/v1/track": {"userId": "u1", "event": "signed_up"},
    "/v1/page": {"userId": "u1"},
    "/v1/screen": {"userId": "u1"},
    "/v1/group": {"groupId": "g1"},
    "/v1/alias": {"previousId": "a1", "userId": "u1"},
    "/v1/batch": {"batch": [{"type": "track", "userId": "u1", "event": "signed_up"}]},
    "/v1/customers": {"filter": {"segment": {"id": 1}}},
    "/v1/send/email": {"transactional_message_id": 1, "to": "a@example.com", "identifiers": {"id": "u1"}},
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    with LocalStack(Options(port=0, sandbox_port=0, customerio="sandbox", pollers=False)) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _stack_environment(local: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py isolates every test's environment; point AWS clients back at this stack's moto."""
    for name, value in local.ops_environment().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    reset_layer_caches()


def routes(stack: LocalStack) -> list[ApiRoute]:
    return [route for spec in stack.functions for route in spec.routes]


def key_headers(form: str, key: str) -> dict[str, str]:
    """The key as x-api-key, as the Basic username (any password) or as a Bearer token."""
    if form == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    if form == "basic-with-password":
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:ignored".encode()).decode()}
    if form == "bearer":
        return {"Authorization": f"Bearer {key}"}
    return {"x-api-key": key}


def request(
    stack: LocalStack, route: ApiRoute, key: str | None, form: str = "x-api-key"
) -> urllib3.BaseHTTPResponse:
    path = route.path.replace("{id}", "user-1")
    headers = {"content-type": "application/json"}
    if key is not None:
        headers.update(key_headers(form, key))
    body = BODIES.get(route.path)
    return urllib3.request(
        route.method, stack.api_url + path, body=None if body is None else json.dumps(body), headers=headers
    )


def footprint(stack: LocalStack) -> tuple[int, int]:
    """(requests Customer.io received, messages on every queue): what a function run would change."""
    assert stack.sandbox is not None
    depths = [row["visible"] + row["in_flight"] for row in stack.state()["queues"]]
    return stack.sandbox.request_count, sum(depths)


def test_local_stack_protects_every_route_of_the_template(local: LocalStack) -> None:
    # GIVEN the routes template.yaml declares (11: events, search, segments, delete, email)
    declared = routes(local)
    before = footprint(local)
    assert {(r.method, r.path) for r in declared} >= {("POST", p) for p in BODIES} | {
        ("GET", "/v1/segments"),
        ("DELETE", "/v1/customers/{id}"),
    }

    for route in declared:
        for key, form in ((None, "x-api-key"), ("", "x-api-key"), ("", "basic"), ("", "bearer")):
            # WHEN a caller calls it without a key
            answer = request(local, route, key, form)

            # THEN API Gateway answers 401 in the contract's shape, saying how to send one
            assert answer.status == 401, (route.method, route.path, form, answer.status)
            body = answer.json()
            assert body["code"] == "UNAUTHORIZED"
            assert "Bearer" in body["message"]
        for key, form in (
            ("not-the-key", "x-api-key"),
            (local.api_key.upper(), "x-api-key"),
            ("not-the-key", "basic"),
            ("not-the-key", "bearer"),
        ):
            # WHEN a caller presents a key the API does not know
            answer = request(local, route, key, form)

            # THEN API Gateway answers 403, before any function runs
            assert answer.status == 403, (route.method, route.path, key, form, answer.status)
            body = answer.json()
            assert body["code"] == "INVALID_API_KEY"
            assert body["message"].startswith("Forbidden")
    assert footprint(local) == before


@pytest.mark.parametrize("form", ["x-api-key", "basic", "basic-with-password", "bearer"])
def test_local_stack_lets_the_right_key_through(local: LocalStack, form: str) -> None:
    # GIVEN the key the stack requires, presented the way one SDK or another sends it
    for route in routes(local):
        # WHEN each route is called with it
        answer = request(local, route, local.api_key, form)

        # THEN the function answers (not API Gateway's 401 or 403)
        assert answer.status not in (401, 403), (route.method, route.path, answer.data[:200])
        assert answer.status < 500, (route.method, route.path, answer.data[:200])


def test_unknown_routes_are_refused_like_api_gateway(local: LocalStack) -> None:
    # GIVEN paths and methods the template does not declare
    for method, path in (
        ("GET", "/v1/identify"),
        ("POST", "/v1/unknown"),
        ("PUT", "/v1/send/email"),
        ("GET", "/"),
    ):
        # WHEN they are called, even with the key
        answer = urllib3.request(method, local.api_url + path, headers={"x-api-key": local.api_key})

        # THEN API Gateway answers 404 naming the method and path, in the same JSON shape
        assert answer.status == 404, (method, path, answer.status)
        body = answer.json()
        assert body["code"] == "not_found"
        assert f"{method} {path}" in body["message"]
