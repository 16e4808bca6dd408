"""Every events/events_*.json (the files `sam local invoke -e` takes) works through the real handler."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from cio_relay.forwarding import iso_time

from local_stack.customerio import FakeCustomerIO
from tests.conftest import Stack
from tests.integration import bodies, call_api, events_handler, receive_all
from tests.support import EVENTS_DIR, LambdaContext, load_event

SAMPLES = sorted(p.name for p in EVENTS_DIR.glob("events_*.json"))
API_SAMPLES = [name for name in SAMPLES if "httpMethod" in load_event(name)]
SQS_SAMPLES = [name for name in SAMPLES if "Records" in load_event(name)]
PIPELINES_ROUTES = {f"/v1/{t}" for t in ("identify", "track", "page", "screen", "group", "alias", "batch")}
CALL_TYPES = {"identify", "track", "page", "screen", "group", "alias"}


def request_body(event: dict[str, Any]) -> Any:
    raw = event["body"]
    if raw and event.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw) if raw else None


def queued_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls a queue body holds, in Customer.io's shape (batch context folded in)."""
    if "batch" not in body:
        return [body]
    shared = {k: v for k, v in body.items() if k != "batch"}
    return [{**shared, **call} for call in body["batch"]]


def test_there_is_a_sample_for_every_operation_and_both_triggers() -> None:
    # GIVEN the sample events
    api = {(load_event(n)["httpMethod"], load_event(n)["resource"]) for n in API_SAMPLES}
    queued_types = {
        call["type"]
        for name in SQS_SAMPLES
        for record in load_event(name)["Records"]
        for call in queued_calls(json.loads(record["body"]))
    }

    # THEN every route has an API sample and every call type an SQS sample
    assert api >= {("POST", route) for route in PIPELINES_ROUTES} | {
        ("DELETE", "/v1/customers/{id}"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/segments"),
    }
    assert queued_types == CALL_TYPES
    # AND both body encodings API Gateway uses appear
    assert {load_event(n)["isBase64Encoded"] for n in API_SAMPLES if load_event(n)["body"]} == {True, False}


@pytest.mark.parametrize("name", API_SAMPLES)
def test_api_sample_is_answered(
    name: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a sample API Gateway event
    event = load_event(name)

    # WHEN the handler gets it
    answer = call_api(event, lambda_context)

    # THEN it is answered 200, and its effect is what the route promises
    assert answer.status == 200, answer.body
    path = event["path"]
    if path in PIPELINES_ROUTES:
        sent = request_body(event)
        expected = queued_calls(sent) if path == "/v1/batch" else [{**sent, "type": path.rsplit("/", 1)[1]}]
        queued = bodies(receive_all(stack, stack.events_queue_url))
        # A call without a timestamp is queued with the accept time.
        assert [{k: v for k, v in b.items() if k != "messageId"} for b in queued] == [
            {"timestamp": b["timestamp"], **c} for b, c in zip(queued, expected, strict=True)
        ]
        assert [b["messageId"] for b in queued] == answer.body["call_ids"]
        assert fake_cio.requests == []
    elif event["httpMethod"] == "DELETE":
        [queued_call] = bodies(receive_all(stack, stack.events_queue_url))
        assert (queued_call["event"], queued_call["userId"]) == (
            "User Deleted",
            event["pathParameters"]["id"],
        )
    else:
        [request] = fake_cio.requests
        assert (request.method, request.path, request.status) == (event["httpMethod"], path, 200)
        assert answer.body == request_json_answer(fake_cio, request.path)


def request_json_answer(fake: FakeCustomerIO, path: str) -> dict[str, Any]:
    if path == "/v1/segments":
        return {"segments": fake.segments}
    # The sample searches plan = "pro" with limit 2: every default person is on the pro plan.
    people = fake.people[:2]
    return {
        "identifiers": [{"email": p["email"], "id": p["id"], "cio_id": p["cio_id"]} for p in people],
        "ids": [p["id"] for p in people],
        "next": ANY,
    }


@pytest.mark.parametrize("name", SQS_SAMPLES)
def test_sqs_sample_is_delivered(
    name: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a sample SQS event
    event = load_event(name)

    # WHEN the handler gets it
    response = events_handler()(event, lambda_context)

    # THEN every record succeeded and Customer.io got every call in one strict /v1/batch request
    assert response == {"batchItemFailures": []}
    [request] = fake_cio.requests
    assert (request.path, request.status, request.strict) == ("/v1/batch", 200, True)
    expected = [c for r in event["Records"] for c in queued_calls(json.loads(r["body"]))]
    delivered = fake_cio.pipelines_calls()
    # A call queued without a timestamp is sent with its message's SentTimestamp.
    sent_at = [
        r["attributes"]["SentTimestamp"]
        for r in event["Records"]
        for _ in queued_calls(json.loads(r["body"]))
    ]
    assert [{k: v for k, v in c.items() if k != "messageId"} for c in delivered] == [
        {"timestamp": iso_time(int(ms)), **{k: v for k, v in c.items() if k != "messageId"}}
        for c, ms in zip(expected, sent_at, strict=True)
    ]
    assert all(c["messageId"] for c in delivered)
    assert dead_letters_empty(stack)


def dead_letters_empty(stack: Stack) -> bool:
    return receive_all(stack, stack.events_dlq_url) == []


def test_samples_are_valid_json_files() -> None:
    # GIVEN the files on disk THEN each one parses and is one of the two triggers
    for name in SAMPLES:
        data = json.loads((Path(EVENTS_DIR) / name).read_text())
        assert ("httpMethod" in data) != ("Records" in data), name
