"""Fuzzing the request models and queue-body parsers: hostile input is refused cleanly, never crashes.

No I/O here (fast). The properties:
- a model either accepts a body or raises pydantic's ValidationError, which maps to an InvalidRequest
  naming a field;
- what a route accepts, the queue side accepts too (the API enqueues it; the SQS side must not
  dead-letter it), and the body survives the round trip unchanged;
- the queue parsers turn any message body into calls or an InvalidRequest, nothing else.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from cio_relay import forwarding, transactional
from cio_relay.errors import InvalidRequest
from cio_relay.http_api import parse_json
from cio_relay.models import invalid_request
from cio_relay.models.email import SendEmail
from cio_relay.models.pipelines import CALL_MODELS, MAX_CALL_BYTES, Batch, PipelinesCall
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.reliability import (
    BATCHES,
    CALLS,
    EMAILS,
    JSON,
    RAW_NASTIES,
    VALID_CALLS,
    VALID_EMAILS,
    dumps,
    write_figures,
)

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    write_figures(
        "Fuzzing: models and queue parsers",
        [
            f"- {sum(OUTCOMES.values())} generated bodies: {OUTCOMES['accepted']} accepted, "
            f"{OUTCOMES['refused']} refused as a 4xx/InvalidRequest naming a field, 0 crashes.",
            "- Every body a route accepted was accepted unchanged by the queue-side parser (round trip).",
        ],
    )


def record(body: str, *, attributes: dict[str, Any] | None = None) -> SQSRecord:
    return SQSRecord(
        {
            "messageId": str(uuid.uuid4()),
            "receiptHandle": "handle",
            "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": attributes or {},
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:cio-relay-events",
        }
    )


def through_api(body: Any) -> Any:
    """The body as the route's model receives it: sent as JSON text, parsed by the resolver."""
    try:
        return parse_json(json.dumps(body))
    except json.JSONDecodeError:
        OUTCOMES["refused"] += 1  # answered 415 before any model sees it (e.g. a lone surrogate)
        raise


def assert_names_a_field(exc: ValidationError) -> InvalidRequest:
    error = invalid_request(exc)
    assert isinstance(error, InvalidRequest)
    assert error.field
    assert isinstance(error.field, str)
    assert error.reason
    assert isinstance(error.reason, str)
    return error


def queue_side_calls(call: dict[str, Any]) -> list[dict[str, Any]]:
    """What the SQS side makes of a body the API side enqueued."""
    encoded = forwarding.encode_checked(call, "body")
    assert len(encoded) <= MAX_CALL_BYTES
    return forwarding.parse_queue_body(record(encoded.decode()))


@FUZZ
@given(model=st.sampled_from(sorted(CALL_MODELS)), body=CALLS | VALID_CALLS | JSON)
def test_call_models_accept_or_name_the_field(model: str, body: Any) -> None:
    # GIVEN any JSON value posted to a Pipelines route
    # WHEN the route's model reads it
    try:
        call = CALL_MODELS[model].model_validate(through_api(body))
    except json.JSONDecodeError:
        return
    except ValidationError as exc:
        # THEN it is refused with an error naming a field
        assert_names_a_field(exc)
        OUTCOMES["refused"] += 1
        return
    # OR, accepted, the queue side accepts exactly what the API side enqueues
    wire = call.wire()
    wire.setdefault("messageId", str(uuid.uuid4()))
    try:
        [parsed] = queue_side_calls(wire)
    except InvalidRequest:
        # refused by the same checks the route makes before enqueueing (size, encoding): a 4xx
        OUTCOMES["refused"] += 1
        return
    assert parsed == json.loads(json.dumps(wire, allow_nan=True))
    OUTCOMES["accepted"] += 1


@FUZZ
@given(body=BATCHES | JSON)
def test_batch_model_accepts_or_names_the_field(body: Any) -> None:
    # GIVEN any JSON value posted to /v1/batch
    try:
        calls = Batch.model_validate(through_api(body)).calls()
    except json.JSONDecodeError:
        return
    except ValidationError as exc:
        # THEN it is refused naming a field (e.g. batch.3.userId)
        assert_names_a_field(exc)
        OUTCOMES["refused"] += 1
        return
    # OR each call it holds survives the queue round trip
    for call in calls:
        call.setdefault("messageId", str(uuid.uuid4()))
        try:
            [parsed] = queue_side_calls(call)
        except InvalidRequest:
            OUTCOMES["refused"] += 1
            return
        assert parsed["messageId"] == call["messageId"]
        assert parsed["type"] == call["type"]
    OUTCOMES["accepted"] += 1


@FUZZ
@given(body=EMAILS | VALID_EMAILS | JSON)
def test_send_email_model_accepts_or_names_the_field(body: Any) -> None:
    # GIVEN any JSON value posted to /v1/send/email
    try:
        request = SendEmail.model_validate(through_api(body))
    except json.JSONDecodeError:
        return
    except ValidationError as exc:
        # THEN it is refused naming a field
        assert_names_a_field(exc)
        OUTCOMES["refused"] += 1
        return
    # OR, accepted, the body deferred to EmailQueue reads back as the same email with the same key
    deferred = transactional.canonical(request.wire()).decode()
    queued = record(deferred, attributes={"IdempotencyKey": {"stringValue": "k-1", "dataType": "String"}})
    channel, parsed = transactional.parse_queue_record(queued)
    assert (channel, parsed.wire()) == ("email", request.wire())
    identity = transactional.queue_key(queued, channel, parsed, dedupe=False)
    assert identity.key == "k-1"
    assert identity.payload_hash == transactional.payload_digest("email", request)
    OUTCOMES["accepted"] += 1


@FUZZ
@given(body=RAW_NASTIES | st.builds(dumps, CALLS | BATCHES | VALID_CALLS | JSON))
def test_events_queue_parser_returns_calls_or_invalid_request(body: str) -> None:
    # GIVEN any text a producer could put on EventsQueue
    # WHEN the SQS side reads it
    try:
        calls = forwarding.parse_queue_body(record(body))
        encoded = [forwarding.encode_checked(call, "body") for call in calls]
    except InvalidRequest as exc:
        refused: InvalidRequest | None = exc
    else:
        refused = None
    if refused is not None:
        # THEN it is an InvalidRequest naming the field (the record is dead-lettered with it) ...
        assert refused.field
        OUTCOMES["refused"] += 1
        return
    # ... or calls, each with a messageId, each within Customer.io's size limit
    assert calls
    assert all(isinstance(c.get("messageId"), str) and c["messageId"] for c in calls)
    assert all(len(e) <= MAX_CALL_BYTES for e in encoded)
    OUTCOMES["accepted"] += 1


@FUZZ
@given(
    body=RAW_NASTIES | st.builds(dumps, EMAILS | VALID_EMAILS | JSON), key=st.none() | st.text(max_size=300)
)
def test_email_queue_parser_returns_an_email_or_invalid_request(body: str, key: str | None) -> None:
    # GIVEN any text (and any IdempotencyKey attribute) a producer could put on EmailQueue
    attributes = {} if key is None else {"IdempotencyKey": {"stringValue": key, "dataType": "String"}}
    # WHEN the SQS side reads it and derives its idempotency key
    try:
        queued = record(body, attributes=attributes)
        channel, request = transactional.parse_queue_record(queued)
        identity = transactional.queue_key(queued, channel, request, dedupe=False)
    except InvalidRequest as exc:
        refused: InvalidRequest | None = exc
    else:
        refused = None
    if refused is not None:
        # THEN it is an InvalidRequest naming the field ...
        assert refused.field
        OUTCOMES["refused"] += 1
        return
    # ... or an email with a usable key
    assert isinstance(request, SendEmail)
    assert identity.key
    assert len(identity.key) <= 256
    OUTCOMES["accepted"] += 1


def test_every_call_model_is_fuzzed() -> None:
    # GIVEN the models the routes use; THEN the fuzzers above cover each of them
    assert set(CALL_MODELS) == {"identify", "track", "page", "screen", "group", "alias"}
    assert all(issubclass(m, PipelinesCall) for m in CALL_MODELS.values())
