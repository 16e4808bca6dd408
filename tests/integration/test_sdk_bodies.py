"""Bodies as the SDKs send them: gzip on every POST route, /v1/batch partial acceptance, 400 and 404.

Through the real handlers with moto queues and the fake Customer.io, as API Gateway hands requests
over (binary media types: every body arrives base64-encoded).
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from local_stack.customerio import FakeCustomerIO
from tests.conftest import Stack
from tests.integration import bodies, call_api, receive_all
from tests.support import LambdaContext, api_event, load_function

EMAIL = {"transactional_message_id": 7, "to": "ada@example.com", "identifiers": {"id": "u1"}}
POSTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("events", "/v1/identify", {"userId": "u1", "traits": {"plan": "pro"}}, 200),
    ("events", "/v1/track", {"userId": "u1", "event": "signed_up"}, 200),
    ("events", "/v1/page", {"userId": "u1", "name": "home"}, 200),
    ("events", "/v1/screen", {"userId": "u1", "name": "home"}, 200),
    ("events", "/v1/group", {"groupId": "g1"}, 200),
    ("events", "/v1/alias", {"previousId": "a1", "userId": "u1"}, 200),
    ("events", "/v1/batch", {"batch": [{"type": "track", "userId": "u1", "event": "e"}]}, 200),
    ("events", "/v1/customers", {"filter": {"segment": {"id": 1}}}, 200),
    ("email", "/v1/send/email", EMAIL, 200),
    ("email", "/v1/send/push", {"transactional_message_id": 3, "identifiers": {"id": "u1"}}, 200),
    (
        "email",
        "/v1/send/sms",
        {"transactional_message_id": 4, "identifiers": {"id": "u1"}, "to": "+14155550123"},
        200,
    ),
]


def gzipped_event(path: str, payload: bytes, **headers: str) -> dict[str, Any]:
    event = api_event("POST", path, headers={"Content-Encoding": "gzip", **headers})
    event["body"] = base64.b64encode(payload).decode()
    event["isBase64Encoded"] = True
    return event


def queued(stack: Stack) -> list[dict[str, Any]]:
    return bodies(receive_all(stack, stack.events_queue_url))


@pytest.mark.parametrize(("function", "path", "body", "status"), POSTS, ids=[p for _, p, _, _ in POSTS])
def test_gzip_body_works_on_every_post_route(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    function: str,
    path: str,
    body: dict[str, Any],
    status: int,
) -> None:
    # GIVEN a body sent with Content-Encoding: gzip (gzip=True in the Python SDKs)
    event = gzipped_event(path, gzip.compress(json.dumps(body).encode()))

    # WHEN API Gateway hands it to the function
    answer = call_api(event, lambda_context, handler=load_function(function).lambda_handler)

    # THEN it is taken as if it had been sent plain
    assert answer.status == status, answer.body
    if path.startswith("/v1/send/"):
        assert (fake_cio.requests[-1].path, fake_cio.requests[-1].json) == (path, body)
    elif path == "/v1/customers":
        assert fake_cio.requests[-1].json == body
    else:
        [call] = queued(stack)
        expected = body["batch"][0] if "batch" in body else {**body, "type": path.rsplit("/", 1)[1]}
        assert {k: v for k, v in call.items() if k not in ("messageId", "timestamp")} == expected


def test_gzip_bomb_is_413_and_nothing_is_queued(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN 50 KB of gzip that inflates to 64 MB
    bomb = gzip.compress(b'{"userId": "u1", "traits": {"x": "' + b"0" * (64 * 1024 * 1024) + b'"}}')
    assert len(bomb) < 100 * 1024

    # WHEN it is posted
    answer = call_api(gzipped_event("/v1/identify", bomb), lambda_context)

    # THEN it is refused as too large, and nothing is queued
    assert answer.status == 413
    assert (answer.body["code"], answer.body["field"]) == ("payload_too_large", "body")
    assert "decompressed" in answer.body["message"]
    assert queued(stack) == []


def test_gzip_just_under_the_bound_is_inflated(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a valid gzip batch of ~480 KB inflated (under Customer.io's 500 KB) in several gzip members
    calls = [
        {"type": "track", "userId": f"u{i}", "event": "e", "properties": {"p": "x" * 4000}}
        for i in range(115)
    ]
    text = json.dumps({"batch": calls}).encode()
    half = len(text) // 2
    payload = gzip.compress(text[:half]) + gzip.compress(text[half:])

    # WHEN it is posted
    answer = call_api(gzipped_event("/v1/batch", payload), lambda_context)

    # THEN every call is queued
    assert answer.status == 200, answer.body
    assert len(answer.body["call_ids"]) == 115


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"userId": "u1"}', "not valid gzip"),
        (gzip.compress(b'{"userId": "u1"}')[:-12], "truncated"),
        (b"", "truncated"),
    ],
    ids=["not-gzip", "truncated", "empty"],
)
def test_bad_gzip_is_400_and_nothing_is_queued(
    stack: Stack, lambda_context: LambdaContext, payload: bytes, message: str
) -> None:
    answer = call_api(gzipped_event("/v1/identify", payload), lambda_context)
    assert answer.status == 400
    assert answer.body["field"] == "body"
    assert message in answer.body["message"]
    assert queued(stack) == []


def test_other_content_encodings_are_415(stack: Stack, lambda_context: LambdaContext) -> None:
    event = gzipped_event("/v1/identify", b"...", **{"Content-Encoding": "br"})
    answer = call_api(event, lambda_context)
    assert (answer.status, answer.body["code"]) == (415, "unsupported_media_type")
    assert "br" in answer.body["message"]


MIXED = {
    "batch": [
        {"type": "identify", "userId": "u1", "messageId": "m-1"},
        {"type": "track", "userId": "u1", "messageId": "m-2"},  # no event
        {"type": "page", "anonymousId": "a1", "messageId": "m-3"},
        {"type": "shout", "userId": "u1"},
    ],
    "context": {"library": {"name": "analytics-python"}},
}


def test_batch_queues_valid_calls_and_lists_each_refused_one(
    stack: Stack, lambda_context: LambdaContext
) -> None:
    # GIVEN a /v1/batch in which two of four calls are invalid
    # WHEN it is posted (without strict mode)
    answer = call_api(api_event("POST", "/v1/batch", MIXED), lambda_context)

    # THEN it answers 200 (the Pipelines SDKs' success) listing each refused call
    assert answer.status == 200, answer.body
    assert answer.body["call_ids"] == ["m-1", "m-3"]
    assert answer.body["refused"] == [
        {"index": 1, "field": "batch.1.event", "message": "Field required"},
        {"index": 3, "field": "batch.3.type", "message": answer.body["refused"][1]["message"]},
    ]
    assert "shout" in answer.body["refused"][1]["message"]
    # AND exactly the valid calls are queued, with the batch's context
    assert [(c["messageId"], c["context"]) for c in queued(stack)] == [
        ("m-1", MIXED["context"]),
        ("m-3", MIXED["context"]),
    ]


@pytest.mark.parametrize("header", ["X-Strict-Mode", "x-strict-mode"])
def test_strict_mode_refuses_the_whole_batch(
    stack: Stack, lambda_context: LambdaContext, header: str
) -> None:
    # WHEN the same batch is posted with X-Strict-Mode: 1 (Customer.io's strict semantics)
    answer = call_api(api_event("POST", "/v1/batch", MIXED, headers={header: "1"}), lambda_context)

    # THEN one invalid call refuses the whole request with 400 and nothing is queued
    assert answer.status == 400
    assert answer.body["code"] == "validation_error"
    assert answer.body["field"] == "batch.1.event"
    assert [e["index"] for e in answer.body["errors"]] == [1, 3]
    assert queued(stack) == []


def test_batch_of_only_invalid_calls_is_400(stack: Stack, lambda_context: LambdaContext) -> None:
    body = {"batch": [{"type": "track", "userId": "u1"}, {"type": "identify"}]}
    answer = call_api(api_event("POST", "/v1/batch", body), lambda_context)
    assert answer.status == 400
    assert {"code", "message"} <= set(answer.body)
    assert answer.body["errors"] == [
        {"index": 0, "field": "batch.0.event", "message": "Field required"},
        {"index": 1, "field": "batch.1.userId", "message": "userId or anonymousId is required"},
    ]
    assert queued(stack) == []


def test_oversize_call_in_a_batch_is_refused_alone(stack: Stack, lambda_context: LambdaContext) -> None:
    body = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "big", "properties": {"b": "x" * 33_000}},
            {"type": "track", "userId": "u1", "event": "small", "messageId": "m-small"},
        ]
    }
    answer = call_api(api_event("POST", "/v1/batch", body), lambda_context)
    assert answer.status == 200
    assert answer.body["call_ids"] == ["m-small"]
    assert answer.body["refused"][0]["index"] == 0
    assert "32768" in answer.body["refused"][0]["message"]


@pytest.mark.parametrize(
    "path", ["/v1/identify", "/v1/track", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias"]
)
def test_validation_errors_on_pipelines_routes_are_400(
    stack: Stack, lambda_context: LambdaContext, path: str
) -> None:
    # GIVEN a call with no identity at all (and no event, groupId, previousId)
    answer = call_api(api_event("POST", path, {"properties": {}}), lambda_context)

    # THEN it is a 400 (final for every SDK), not a 422, with code and message
    assert answer.status == 400
    assert answer.body["code"] == "validation_error"
    assert answer.body["message"]
    assert queued(stack) == []


def test_unknown_route_is_404_naming_it(stack: Stack, lambda_context: LambdaContext) -> None:
    answer = call_api(api_event("PUT", "/v1/identify"), lambda_context)
    assert answer.status == 404
    assert answer.body["code"] == "not_found"
    assert "PUT /v1/identify" in answer.body["message"]
