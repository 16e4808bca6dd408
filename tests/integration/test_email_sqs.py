"""EmailQueue through the real handler: each record sent, retried, or dead-lettered with a reason."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, Stack, reset_caches
from tests.support import REGION, LambdaContext, load_event, load_function, sqs_records_from

PATH = "/v1/send/email"
WELCOME: dict[str, Any] = {
    "transactional_message_id": "welcome",
    "to": "ada@example.com",
    "identifiers": {"id": "user-1"},
}


def enqueue(stack: Stack, body: dict[str, Any] | str, key: str | None = None) -> str:
    attributes = {"IdempotencyKey": {"DataType": "String", "StringValue": key}} if key else {}
    text = body if isinstance(body, str) else json.dumps(body)
    answer = stack.sqs.send_message(
        QueueUrl=stack.email_queue_url, MessageBody=text, MessageAttributes=attributes
    )
    return str(answer["MessageId"])


def receive(stack: Stack) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The SQS event Lambda would deliver for EmailQueue now, and the messages behind it."""
    messages = stack.receive(stack.email_queue_url)
    return sqs_records_from(messages, stack.email_queue_arn), messages


def deliver(event: dict[str, Any], context: LambdaContext) -> list[str]:
    answer = load_function("email").lambda_handler(event, context)
    return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    """Each dead-lettered message as {"body": ..., attribute name: value}."""
    return [
        {"body": m["Body"], **{k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}}
        for m in stack.receive(stack.email_dlq_url)
    ]


@pytest.fixture
def one_at_a_time(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send a batch's records one after another: the fake hands out its queued faults in arrival
    order, so a test that fails "the first of two" sends needs a known order."""
    monkeypatch.setenv("EMAIL_SEND_CONCURRENCY", "1")
    reset_caches()


def record_statuses(stack: Stack) -> list[str]:
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=stack.idempotency_table)["Items"]
    return [item["status"]["S"] for item in items]


def test_email_queue_sample_event_is_sent(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the sample EmailQueue batch from events/ (one record with an IdempotencyKey, one without)
    event = load_event("email_sqs_send.json")

    # WHEN it is delivered
    failures = deliver(event, lambda_context)

    # THEN both emails reached Customer.io exactly as queued (sent concurrently: in either order)
    assert failures == []
    sent = sorted((e["json"] for e in fake_cio.emails), key=json.dumps)
    assert sent == sorted((json.loads(r["body"]) for r in event["Records"]), key=json.dumps)


def test_invalid_queue_bodies_are_dead_lettered_with_the_reason(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a batch with a non-JSON body, a body missing its identifiers, and a valid email
    enqueue(stack, "not json")
    enqueue(stack, {"transactional_message_id": "welcome", "to": "ada@example.com"})
    enqueue(stack, WELCOME)
    event, _ = receive(stack)

    # WHEN it is delivered
    failures = deliver(event, lambda_context)

    # THEN the valid email is sent; the others are dead-lettered at once, acknowledged, with reasons
    assert failures == []
    assert [e["json"] for e in fake_cio.emails] == [WELCOME]
    reasons = {d["body"]: (d["FailureReason"], d["FailureStatus"]) for d in dead_letters(stack)}
    assert reasons["not json"] == ("body: message body is not valid JSON", "400")
    assert next(r for b, r in reasons.items() if b != "not json")[0].startswith("identifiers:")


def test_unknown_template_is_dead_lettered_with_customerio_message(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io knows only the "receipt" template, and a queued "welcome" email with a key
    fake_cio.known_templates = {"receipt"}
    message_id = enqueue(stack, WELCOME, key="welcome-user-1")
    event, _ = receive(stack)

    # WHEN it is delivered
    failures = deliver(event, lambda_context)

    # THEN it is dead-lettered at once with Customer.io's answer, keeping its key for a later redrive
    assert failures == []
    [dead] = dead_letters(stack)
    assert "transactional_message_id not found" in dead["FailureReason"]
    assert dead["FailureStatus"] == "400"
    assert dead["SourceMessageId"] == message_id
    assert dead["IdempotencyKey"] == "welcome-user-1"
    assert json.loads(dead["body"]) == WELCOME


def test_retryable_failure_is_reported_for_retry_and_not_dead_lettered(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, one_at_a_time: None
) -> None:
    # GIVEN Customer.io answers 503 to the first of two queued emails
    fake_cio.fail(PATH, Fault(status=503))
    failing = enqueue(stack, WELCOME, key="welcome-user-1")
    enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="welcome-user-2")
    event, _ = receive(stack)

    # WHEN the batch is delivered
    failures = deliver(event, lambda_context)

    # THEN only the failed record is reported (it comes back after its backoff), nothing is dead-lettered,
    # and no idempotency record blocks its retry
    assert failures == [failing]
    assert dead_letters(stack) == []
    assert record_statuses(stack) == ["COMPLETED"]


def test_rejected_credentials_are_re_read_from_the_secret_and_the_send_retried(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the container cached the App API key, then the operator rotated it in Customer.io and the secret
    enqueue(stack, WELCOME, key="welcome-user-1")
    enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="welcome-user-2")
    event, _ = receive(stack)
    deliver({"Records": event["Records"][:1]}, lambda_context)  # warms the credentials cache
    fake_cio.app_api_key = "app-rotated-key"
    boto3.client("secretsmanager", region_name=REGION).put_secret_value(
        SecretId=stack.secret_arn,
        SecretString=json.dumps({"pipelines_api_key": "pk", "app_api_key": "app-rotated-key"}),
    )

    # WHEN the next record is delivered
    failures = deliver({"Records": event["Records"][1:]}, lambda_context)

    # THEN the 401 made the function re-read the secret and send again at once, with the new key
    assert failures == []
    tries = fake_cio.requests_to(PATH)[1:]
    assert [r.status for r in tries] == [401, 200]
    assert tries[0].headers["authorization"] == f"Bearer {APP_KEY}"
    assert tries[1].headers["authorization"] == "Bearer app-rotated-key"


def test_credentials_still_rejected_after_re_read_are_retried_not_dropped(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, one_at_a_time: None
) -> None:
    # GIVEN Customer.io refuses the key, before and after the secret is re-read
    fake_cio.fail(PATH, Fault(status=401), Fault(status=401))
    failing = enqueue(stack, WELCOME, key="welcome-user-1")
    enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="welcome-user-2")
    event, _ = receive(stack)

    # WHEN the batch is delivered
    failures = deliver(event, lambda_context)

    # THEN the refused record waits for the operator on the queue (backoff), it is not dead-lettered
    assert failures == [failing]
    assert dead_letters(stack) == []


def test_batch_where_every_record_fails_fails_the_invocation(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io is down
    fake_cio.outage(True)
    enqueue(stack, WELCOME, key="welcome-user-1")
    enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="welcome-user-2")
    event, _ = receive(stack)

    # WHEN the batch is delivered
    # THEN the invocation fails (so Lambda slows its polling) and both messages stay on the queue
    with pytest.raises(BatchProcessingError):
        deliver(event, lambda_context)
    assert sum(stack.depth(stack.email_queue_url).values()) == 2
    assert dead_letters(stack) == []


def test_no_send_is_started_when_the_invocation_is_about_to_time_out(
    stack: Stack, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a queued email and an invocation with less time left than one Customer.io request needs
    enqueue(stack, WELCOME, key="welcome-user-1")
    event, _ = receive(stack)
    short = LambdaContext(remaining_ms=1_500)

    # WHEN it is delivered
    # THEN nothing is sent, and the record comes straight back from the queue
    with pytest.raises(BatchProcessingError):
        deliver(event, short)
    assert fake_cio.requests == []
    assert stack.depth(stack.email_queue_url) == {"visible": 1, "in_flight": 0}


def test_read_timeout_is_retried_at_least_once_so_the_email_may_be_sent_twice(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    one_at_a_time: None,
) -> None:
    # GIVEN Customer.io accepts a queued email but answers only after the relay's read timeout
    monkeypatch.setenv("CUSTOMERIO_READ_TIMEOUT", "0.3")
    reset_caches()
    fake_cio.fail(PATH, Fault(delay=1.0))
    message_id = enqueue(stack, WELCOME, key="welcome-user-1")
    enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="welcome-user-2")
    event, messages = receive(stack)

    # WHEN the batch is delivered
    failures = deliver(event, lambda_context)

    # THEN the ambiguous record is reported for retry: not dead-lettered, no completed record for its key
    assert failures == [message_id]
    assert dead_letters(stack) == []
    assert record_statuses(stack) == ["COMPLETED"]  # the other email only
    assert len(fake_cio.emails) == 2  # Customer.io did take the timed-out one

    # WHEN SQS delivers it again
    handle = next(m["ReceiptHandle"] for m in messages if m["MessageId"] == message_id)
    stack.sqs.change_message_visibility(
        QueueUrl=stack.email_queue_url, ReceiptHandle=handle, VisibilityTimeout=0
    )
    again, _ = receive(stack)
    assert [r["attributes"]["ApproximateReceiveCount"] for r in again["Records"]] == ["2"]

    # THEN it is sent again (at-least-once), and from then on its key is done
    assert deliver(again, lambda_context) == []
    welcome = [e for e in fake_cio.emails if e["json"]["identifiers"]["id"] == "user-1"]
    assert len(welcome) == 2
    assert record_statuses(stack) == ["COMPLETED", "COMPLETED"]


def test_missing_idempotency_table_backs_records_off_with_the_reason(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a deployment without IDEMPOTENCY_TABLE, and a queued email
    monkeypatch.delenv("IDEMPOTENCY_TABLE")
    reset_caches()
    enqueue(stack, WELCOME, key="welcome-user-1")
    event, _ = receive(stack)

    # WHEN it is delivered
    # THEN nothing is sent without the never-twice guarantee; the record stays queued, not dead-lettered
    with pytest.raises(BatchProcessingError) as caught:
        deliver(event, lambda_context)
    assert "IDEMPOTENCY_TABLE" in str(caught.value.child_exceptions[0][1])
    assert fake_cio.requests == []
    assert dead_letters(stack) == []
