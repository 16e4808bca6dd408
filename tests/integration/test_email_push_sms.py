"""POST /v1/send/push and /v1/send/sms, and EmailQueue's Channel attribute, through the real handler."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, Stack
from tests.support import LambdaContext, api_event, load_event, load_function, sqs_records_from

PUSH: dict[str, Any] = {
    "transactional_message_id": "order_shipped",
    "identifiers": {"id": "user-1"},
    "title": "Shipped",
    "message": "Order 1042 is on its way",
    "custom_payload": {"ios": {"aps": {"badge": 1}}, "android": {"priority": "high"}},
}
SMS: dict[str, Any] = {"transactional_message_id": 12, "identifiers": {"id": "user-1"}, "to": "+14155550123"}
BODIES = {"push": PUSH, "sms": SMS}


def post(channel: str, body: Any, context: LambdaContext, key: str | None = None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else None
    event = api_event("POST", f"/v1/send/{channel}", body, headers=headers)
    answer: dict[str, Any] = load_function("email").lambda_handler(event, context)
    return answer


def deliver(event: dict[str, Any], context: LambdaContext) -> list[str]:
    answer = load_function("email").lambda_handler(event, context)
    return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]


@pytest.mark.parametrize("channel", ["push", "sms"])
def test_send_is_made_now_with_the_app_key_and_answered_with_the_delivery_id(
    channel: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # WHEN a caller sends a push / an SMS
    answer = post(channel, BODIES[channel], lambda_context, key=f"{channel}-1")

    # THEN it reached /v1/send/<channel> as sent, with Bearer auth; the answer is Customer.io's
    [sent] = fake_cio.messages
    assert answer["statusCode"] == 200
    assert sent["path"] == f"/v1/send/{channel}"
    assert sent["json"] == BODIES[channel]
    assert sent["headers"]["authorization"] == f"Bearer {APP_KEY}"
    assert json.loads(answer["body"])["delivery_id"] == sent["delivery_id"]

    # AND a retry with the same key is a replay, marked as such
    again = post(channel, BODIES[channel], lambda_context, key=f"{channel}-1")
    assert json.loads(again["body"]) == json.loads(answer["body"])
    assert again["multiValueHeaders"]["Idempotent-Replayed"] == ["true"]
    assert len(fake_cio.messages) == 1


@pytest.mark.parametrize(
    ("channel", "change", "field"),
    [
        ("push", {"transactional_message_id": True}, "transactional_message_id"),
        ("push", {"sound": "loud"}, "sound"),
        ("push", {"custom_payload": {"web": {}}}, "custom_payload.web"),
        ("sms", {"to": None}, "to"),
        ("sms", {"tracked": "yes"}, "tracked"),
        ("sms", {"identifiers": {"id": "u", "email": "a@example.com"}}, "identifiers"),
    ],
)
def test_invalid_push_or_sms_is_422_naming_the_field(
    channel: str,
    change: dict[str, Any],
    field: str,
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
) -> None:
    body = {k: v for k, v in {**BODIES[channel], **change}.items() if v is not None}
    answer = post(channel, body, lambda_context)
    assert answer["statusCode"] == 422
    assert json.loads(answer["body"])["field"] == field
    assert fake_cio.requests == []


@pytest.mark.parametrize("channel", ["push", "sms"])
def test_deferred_push_or_sms_is_queued_with_its_channel_and_sent_from_the_queue(
    channel: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io answers 503 to the send
    fake_cio.fail(f"/v1/send/{channel}", Fault(status=503))
    answer = post(channel, BODIES[channel], lambda_context)
    assert answer["statusCode"] == 202

    # WHEN EmailQueue delivers it
    messages = stack.receive(stack.email_queue_url)
    assert messages[0]["MessageAttributes"]["Channel"]["StringValue"] == channel
    assert deliver(sqs_records_from(messages, stack.email_queue_arn), lambda_context) == []

    # THEN it went to the same endpoint, once
    assert [m["path"] for m in fake_cio.messages] == [f"/v1/send/{channel}"]
    assert fake_cio.emails == []


@pytest.mark.parametrize("channel", ["push", "sms"])
def test_sample_events_are_sent(
    channel: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the API and SQS samples of events/ for this channel
    api = load_function("email").lambda_handler(load_event(f"email_api_send_{channel}.json"), lambda_context)
    queued = deliver(load_event(f"email_sqs_send_{channel}.json"), lambda_context)

    # THEN both reached /v1/send/<channel>
    assert api["statusCode"] == 200
    assert queued == []
    assert [m["path"] for m in fake_cio.messages] == [f"/v1/send/{channel}"] * 2


def test_unknown_channel_is_dead_lettered_with_the_reason(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer wrote Channel "fax"
    stack.sqs.send_message(
        QueueUrl=stack.email_queue_url,
        MessageBody=json.dumps(SMS),
        MessageAttributes={"Channel": {"DataType": "String", "StringValue": "fax"}},
    )

    # WHEN it is delivered
    failures = deliver(
        sqs_records_from(stack.receive(stack.email_queue_url), stack.email_queue_arn), lambda_context
    )

    # THEN it is dead-lettered at once naming the attribute, and nothing was sent
    assert failures == []
    [dead] = stack.receive(stack.email_dlq_url)
    reason = dead["MessageAttributes"]["FailureReason"]["StringValue"]
    assert reason.startswith("Channel: must be one of email, push, sms")
    assert fake_cio.requests == []
