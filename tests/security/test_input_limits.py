"""Oversized bodies, oversized batches and too many recipients are refused before Customer.io is called.

Each limit is Customer.io's own (32 KB per call, 500 KB per batch request, 15 recipients, attachments
under 2 MB, send_at at most 90 days ahead) or the relay's (10,000 calls per batch, 1 MB email body,
64 levels of nesting, 256-character idempotency keys). On the API side the caller gets a 4xx naming
the field and nothing is queued; on the queue side the message is dead-lettered with the reason.
Either way the fake Customer.io receives nothing.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from local_stack.customerio import FakeCustomerIO
from tests.conftest import Stack
from tests.integration import call_api
from tests.support import LambdaContext, api_event, load_function, sqs_records_from

KB = 1024
EMAIL: dict[str, Any] = {"transactional_message_id": 2, "to": "a@example.com", "identifiers": {"id": "u1"}}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def big(n: int) -> str:
    return "x" * n


API_LIMITS = [
    pytest.param(
        "events",
        "POST",
        "/v1/identify",
        {"userId": "u1", "traits": {"blob": big(33 * KB)}},
        413,
        "body",
        id="call-over-32KB",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/batch",
        {
            "batch": [
                {"type": "track", "userId": f"u{i}", "event": "e", "properties": {"b": big(30 * KB)}}
                for i in range(20)
            ]
        },
        413,
        "batch",
        id="batch-over-500KB",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/batch",
        {"batch": [{"type": "identify", "userId": "u1", "traits": {"b": big(33 * KB)}}]},
        413,
        "batch.0",
        id="batch-call-over-32KB",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/batch",
        {"batch": [{"type": "page", "userId": "u"}] * 10_001},
        400,
        "batch",
        id="batch-over-10000-calls",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/track",
        {"userId": "u1", "event": big(1025)},
        400,
        "event",
        id="event-name-too-long",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/identify",
        {"userId": big(1025)},
        400,
        "userId",
        id="user-id-too-long",
    ),
    pytest.param(
        "events",
        "POST",
        "/v1/identify",
        {"userId": "u1", "traits": nested(80)},
        400,
        "traits",
        id="nested-too-deep",
    ),
    pytest.param(
        "email",
        "POST",
        "/v1/send/email",
        {
            **EMAIL,
            "cc": ", ".join(f"c{i}@example.com" for i in range(10)),
            "bcc": ", ".join(f"b{i}@example.com" for i in range(5)),
        },
        422,
        "to",
        id="16-recipients",
    ),
    pytest.param(
        "email",
        "POST",
        "/v1/send/email",
        {**EMAIL, "attachments": {"big.bin": base64.b64encode(b"\0" * (1536 * KB + 1)).decode()}},
        413,
        None,
        id="attachments-2MB",
    ),
    pytest.param(
        "email",
        "POST",
        "/v1/send/email",
        {
            **EMAIL,
            "transactional_message_id": None,
            "from": "f@example.com",
            "subject": "s",
            "body": big(1025 * KB),
        },
        413,
        None,
        id="email-body-over-1MB",
    ),
    pytest.param(
        "email",
        "POST",
        "/v1/send/email",
        {**EMAIL, "send_at": int(time.time()) + 91 * 24 * 3600},
        422,
        "send_at",
        id="send-at-over-90-days",
    ),
]


@pytest.mark.parametrize(("function", "method", "path", "body", "status", "field"), API_LIMITS)
def test_api_refuses_over_limit_input_before_calling_customerio(
    function: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    field: str | None,
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
) -> None:
    # GIVEN a request over one of the limits
    event = api_event(method, path, body)

    # WHEN API Gateway hands it to the function
    answer = call_api(event, lambda_context, handler=load_function(function).lambda_handler)

    # THEN it is refused with a 4xx naming the field ...
    assert answer.status == status, answer.body
    assert answer.body["code"] in ("payload_too_large", "validation_error", "invalid_request")
    if field is not None:
        assert answer.body["field"] == field
    # ... before anything was queued or sent
    assert fake_cio.requests == []
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}
    assert stack.depth(stack.email_queue_url) == {"visible": 0, "in_flight": 0}


def test_idempotency_key_over_256_characters_is_refused(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an Idempotency-Key of 257 characters
    event = api_event("POST", "/v1/send/email", EMAIL, headers={"Idempotency-Key": "k" * 257})
    # WHEN it is posted
    answer = call_api(event, lambda_context, handler=load_function("email").lambda_handler)
    # THEN it is a 400 naming the header, and nothing was sent
    assert answer.status == 400
    assert answer.body["field"] == "Idempotency-Key"
    assert fake_cio.emails == []


def test_search_page_over_1000_is_refused(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a people search asking for 1,001 per page (Customer.io's maximum is 1,000)
    event = api_event("POST", "/v1/customers", {"filter": {"segment": {"id": 1}}}, query={"limit": "1001"})
    # WHEN it is posted; THEN it is a 422 naming the parameter, and Customer.io is not asked
    answer = call_api(event, lambda_context)
    assert answer.status == 422
    assert answer.body["field"] == "query.limit"
    assert fake_cio.requests == []


QUEUE_LIMITS = [
    pytest.param(
        "events",
        {"type": "identify", "userId": "u1", "traits": {"blob": big(33 * KB)}},
        "413",
        id="call-over-32KB",
    ),
    pytest.param(
        "events",
        {"batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"b": big(33 * KB)}}]},
        "413",
        id="batch-call-over-32KB",
    ),
    pytest.param(
        "email",
        {**EMAIL, "to": ", ".join(f"t{i}@example.com" for i in range(16))},
        "400",
        id="16-recipients",
    ),
    pytest.param(
        "email", {**EMAIL, "send_at": int(time.time()) + 91 * 24 * 3600}, "400", id="send-at-over-90-days"
    ),
]


@pytest.mark.parametrize(("function", "body", "status"), QUEUE_LIMITS)
def test_queue_dead_letters_over_limit_messages_without_calling_customerio(
    function: str,
    body: dict[str, Any],
    status: str,
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
) -> None:
    # GIVEN a producer wrote an over-limit message straight onto the queue
    queue_url, queue_arn, dlq_url = (
        (stack.events_queue_url, stack.events_queue_arn, stack.events_dlq_url)
        if function == "events"
        else (stack.email_queue_url, stack.email_queue_arn, stack.email_dlq_url)
    )
    stack.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))

    # WHEN Lambda delivers it
    messages = stack.receive(queue_url)
    answer = load_function(function).lambda_handler(sqs_records_from(messages, queue_arn), lambda_context)

    # THEN it is acknowledged and dead-lettered with its reason, and Customer.io received nothing
    assert answer == {"batchItemFailures": []}
    [dead] = stack.receive(dlq_url)
    assert dead["MessageAttributes"]["FailureStatus"]["StringValue"] == status
    assert dead["MessageAttributes"]["FailureReason"]["StringValue"]
    assert fake_cio.requests == []
