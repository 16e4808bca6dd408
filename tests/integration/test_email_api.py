"""POST /v1/send/email through the real handler: send now, defer to EmailQueue, or say why not."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, Stack, reset_caches
from tests.support import LambdaContext, api_event, load_event, load_function

PATH = "/v1/send/email"
WELCOME: dict[str, Any] = {
    "transactional_message_id": "welcome",
    "to": "ada@example.com",
    "identifiers": {"id": "user-1"},
    "message_data": {"first_name": "Ada"},
}


def post(body: Any, context: LambdaContext, *, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key is not None else None
    answer = load_function("email").lambda_handler(api_event("POST", PATH, body, headers=headers), context)
    return answer["statusCode"], json.loads(answer["body"])


def queued(stack: Stack) -> list[dict[str, Any]]:
    return stack.receive(stack.email_queue_url)


def test_send_email_sends_now_and_answers_customerio_delivery_id(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io is up
    # WHEN a caller sends a template email
    status, body = post(WELCOME, lambda_context, key="welcome-user-1")

    # THEN it answers 200 with Customer.io's delivery id, sent once with the App API key, nothing queued
    assert status == 200
    [sent] = fake_cio.emails
    assert body == {"delivery_id": sent["delivery_id"], "queued_at": sent["queued_at"]}
    assert sent["json"] == WELCOME
    assert sent["headers"]["authorization"] == f"Bearer {APP_KEY}"
    assert queued(stack) == []


@pytest.mark.parametrize("name", ["email_api_send.json", "email_api_send_base64.json"])
def test_send_email_sample_events_are_sent(
    name: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a sample event from events/ (plain and base64 bodies, as `sam local invoke -e` takes them)
    event = load_event(name)
    raw = event["body"]
    sent_body = json.loads(base64.b64decode(raw) if event["isBase64Encoded"] else raw)

    # WHEN it is handled
    answer = load_function("email").lambda_handler(event, lambda_context)

    # THEN the email reached Customer.io as written
    assert answer["statusCode"] == 200
    [sent] = fake_cio.emails
    assert sent["json"] == sent_body
    assert json.loads(answer["body"])["delivery_id"] == sent["delivery_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"identifiers": {"id": "u1", "email": "ada@example.com"}}, "identifiers"),
        ({"to": None}, "to"),
        ({"transactional_message_id": None}, "transactional_message_id"),
        ({"attachments": {"a.pdf": "not base64!"}}, "attachments"),
    ],
)
def test_send_email_invalid_body_is_422_naming_the_field(
    change: dict[str, Any], field: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a body that breaks one of Customer.io's rules
    body = {k: v for k, v in {**WELCOME, **change}.items() if v is not None}

    # WHEN it is posted
    status, answer = post(body, lambda_context)

    # THEN 422 names the field, and nothing was sent or queued
    assert status == 422
    assert answer["code"] == "validation_error"
    assert answer["field"] == field
    assert fake_cio.emails == []
    assert queued(stack) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"message_data": {"blob": "x" * (1024 * 1024)}}, "body"),
        ({"attachments": {"big.bin": base64.b64encode(b"x" * (1536 * 1024)).decode()}}, "attachments"),
    ],
)
def test_send_email_over_customerio_size_limits_is_413(
    change: dict[str, Any], field: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an email over 1 MB without attachments, or with 2 MB of attachments
    # WHEN it is posted
    status, answer = post({**WELCOME, **change}, lambda_context)

    # THEN 413 names the part at fault, and nothing was sent
    assert status == 413
    assert answer["code"] == "payload_too_large"
    assert answer["field"] == field
    assert fake_cio.emails == []


def test_send_email_unusable_idempotency_key_is_400(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an Idempotency-Key longer than 256 characters
    # WHEN the email is posted with it
    status, answer = post(WELCOME, lambda_context, key="k" * 257)

    # THEN 400 names the header, and nothing was sent
    assert status == 400
    assert answer["field"] == "Idempotency-Key"
    assert fake_cio.emails == []


def test_send_email_unknown_template_is_400_with_customerio_message(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io knows only the "receipt" template
    fake_cio.known_templates = {"receipt"}

    # WHEN a caller sends the "welcome" template
    status, answer = post(WELCOME, lambda_context)

    # THEN 400 carries Customer.io's own message, and the email is not queued for a pointless retry
    assert status == 400
    assert answer["code"] == "customerio_rejected"
    assert "transactional_message_id not found" in answer["message"]
    assert queued(stack) == []


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ([Fault(status=503)], "customerio_unavailable"),
        ([Fault(status=429, retry_after="5")], "customerio_rate_limited"),
        ([Fault(drop=True), Fault(drop=True)], "customerio_unavailable"),
        ([Fault(status=401), Fault(status=401)], "customerio_auth_rejected"),
    ],
    ids=["503", "429", "connection-dropped", "401-after-secret-re-read"],
)
def test_send_email_deferred_to_queue_when_customerio_cannot_take_it_now(
    faults: list[Fault], reason: str, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io fails the send in a way worth retrying
    fake_cio.fail(PATH, *faults)

    # WHEN a caller sends an email with a key
    status, answer = post(WELCOME, lambda_context, key="welcome-user-1")

    # THEN 202 says why and which message holds it; the queue holds the body under the same key
    assert status == 202
    assert answer["status"] == "queued"
    assert answer["reason"] == reason
    [message] = queued(stack)
    assert answer["message_id"] == message["MessageId"]
    assert json.loads(message["Body"]) == WELCOME
    assert message["MessageAttributes"]["IdempotencyKey"]["StringValue"] == "welcome-user-1"
    assert fake_cio.emails == []


def test_send_email_is_503_when_it_can_be_neither_sent_nor_queued(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Customer.io is down and EmailQueue refuses messages (here: it does not exist)
    fake_cio.outage(True)
    monkeypatch.setenv("EMAIL_QUEUE_URL", stack.email_queue_url + "-gone")
    reset_caches()

    # WHEN a caller sends an email
    status, answer = post(WELCOME, lambda_context, key="welcome-user-1")

    # THEN 503: the relay does not claim a send that nothing holds
    assert status == 503
    assert answer["code"] == "enqueue_failed"
    assert queued(stack) == []

    # AND WHEN Customer.io is back and the caller retries with the same key, THEN it is sent (no stale lock)
    fake_cio.outage(False)
    status, answer = post(WELCOME, lambda_context, key="welcome-user-1")
    assert status == 200
    assert [e["delivery_id"] for e in fake_cio.emails] == [answer["delivery_id"]]


def test_send_email_without_idempotency_table_is_503_naming_the_variable(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a deployment without IDEMPOTENCY_TABLE
    monkeypatch.delenv("IDEMPOTENCY_TABLE")
    reset_caches()

    # WHEN a caller sends an email
    status, answer = post(WELCOME, lambda_context)

    # THEN 503 names the missing variable, and nothing is sent without the never-twice guarantee
    assert status == 503
    assert "IDEMPOTENCY_TABLE" in answer["message"]
    assert fake_cio.emails == []


def test_send_email_too_large_for_the_queue_is_503_when_it_must_be_deferred(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io is down, and an email whose attachments fit Customer.io (< 2 MB) but not SQS (1 MiB)
    fake_cio.outage(True)
    body = {**WELCOME, "attachments": {"report.pdf": base64.b64encode(b"x" * 1_200_000).decode()}}

    # WHEN a caller sends it
    status, answer = post(body, lambda_context, key="report-1")

    # THEN 503: it could not be sent now and nothing holds it, so the caller must retry
    assert status == 503
    assert answer["code"] == "enqueue_failed"
    assert queued(stack) == []
