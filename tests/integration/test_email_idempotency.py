"""Never twice: one send reaches Customer.io per idempotency key, over the API, over SQS and across both."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import Stack, reset_caches
from tests.support import REGION, LambdaContext, api_event, load_function, sqs_records_from

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


def enqueue(stack: Stack, body: dict[str, Any], key: str | None = None) -> str:
    attributes = {"IdempotencyKey": {"DataType": "String", "StringValue": key}} if key else {}
    answer = stack.sqs.send_message(
        QueueUrl=stack.email_queue_url, MessageBody=json.dumps(body), MessageAttributes=attributes
    )
    return str(answer["MessageId"])


def receive_event(stack: Stack) -> dict[str, Any]:
    """What Lambda's event source mapping would hand the function for EmailQueue right now."""
    return sqs_records_from(stack.receive(stack.email_queue_url), stack.email_queue_arn)


def deliver(event: dict[str, Any], context: LambdaContext) -> list[str]:
    answer = load_function("email").lambda_handler(event, context)
    return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]


def accepted_sends(fake: FakeCustomerIO) -> int:
    return sum(1 for request in fake.requests_to(PATH) if request.accepted)


def record_statuses(stack: Stack) -> list[str]:
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=stack.idempotency_table)["Items"]
    return [item["status"]["S"] for item in items]


def test_duplicate_api_calls_with_one_key_send_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an email already sent with Idempotency-Key "welcome-user-1"
    first_status, first = post(WELCOME, lambda_context, key="welcome-user-1")

    # WHEN the caller sends it again with the same key (a retry after a lost answer)
    second_status, second = post(WELCOME, lambda_context, key="welcome-user-1")

    # THEN both answers carry the first delivery id, and Customer.io saw one send
    assert (first_status, second_status) == (200, 200)
    assert second == first
    assert accepted_sends(fake_cio) == 1
    assert record_statuses(stack) == ["COMPLETED"]


def test_same_payload_without_key_is_sent_again_because_a_repeat_is_deliberate(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an email sent without an Idempotency-Key (a "resend my code" button)
    status, first = post(WELCOME, lambda_context)

    # WHEN the same payload arrives again
    again_status, again = post(dict(reversed(list(WELCOME.items()))), lambda_context)

    # THEN both are sent: two answers, two delivery ids, two sends at Customer.io, nothing replayed
    assert (status, again_status) == (200, 200)
    assert again["delivery_id"] != first["delivery_id"]
    assert accepted_sends(fake_cio) == 2
    assert record_statuses(stack) == []


def test_dedupe_window_makes_an_identical_payload_without_key_a_duplicate(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN payload de-duplication is switched on for 10 minutes
    monkeypatch.setenv("EMAIL_DEDUPE_WINDOW_SECONDS", "600")
    reset_caches()
    _, first = post(WELCOME, lambda_context)

    # WHEN the same payload arrives again (keys reordered), and then a different email
    again = load_function("email").lambda_handler(
        api_event("POST", PATH, dict(reversed(list(WELCOME.items())))), lambda_context
    )
    _, other = post({**WELCOME, "identifiers": {"id": "user-2"}}, lambda_context)

    # THEN the repeat is answered with the first delivery id, marked replayed; the other one is sent
    assert again["statusCode"] == 200
    assert json.loads(again["body"]) == first
    assert again["multiValueHeaders"]["Idempotent-Replayed"] == ["true"]
    assert other["delivery_id"] != first["delivery_id"]
    assert accepted_sends(fake_cio) == 2
    # AND its record lives for the window, not for the key lifetime
    [item, _] = boto3.client("dynamodb", region_name=REGION).scan(TableName=stack.idempotency_table)["Items"]
    assert int(item["expiration"]["N"]) - time.time() < 601


def test_same_key_with_a_different_payload_is_refused_on_the_api(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an email sent with key "k-1"
    post(WELCOME, lambda_context, key="k-1")

    # WHEN another email reuses "k-1"
    status, answer = post({**WELCOME, "message_data": {"first_name": "Grace"}}, lambda_context, key="k-1")

    # THEN 422 says the key is taken, and the second email was not sent
    assert status == 422
    assert answer["code"] == "idempotency_key_reused"
    assert answer["field"] == "Idempotency-Key"
    assert accepted_sends(fake_cio) == 1


def test_sqs_redelivery_of_one_message_sends_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a queued email without a key, received once
    enqueue(stack, WELCOME)
    event = receive_event(stack)

    # WHEN the same record is processed twice (SQS delivers at least once)
    first = deliver(event, lambda_context)
    second = deliver(event, lambda_context)

    # THEN both succeed and Customer.io saw one send
    assert (first, second) == ([], [])
    assert accepted_sends(fake_cio) == 1


def test_two_messages_with_one_idempotency_key_send_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer wrote the same email twice with IdempotencyKey "order-1042"
    enqueue(stack, WELCOME, key="order-1042")
    enqueue(stack, WELCOME, key="order-1042")
    event = receive_event(stack)
    assert len(event["Records"]) == 2

    # WHEN the batch is delivered
    failures = deliver(event, lambda_context)

    # THEN both records are done and Customer.io saw one send
    assert failures == []
    assert accepted_sends(fake_cio) == 1


def test_same_key_with_a_different_payload_on_the_queue_is_dead_lettered(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN "order-1042" already sent one email
    enqueue(stack, WELCOME, key="order-1042")
    deliver(receive_event(stack), lambda_context)

    # WHEN a different email arrives under the same key
    message_id = enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="order-1042")
    failures = deliver(receive_event(stack), lambda_context)

    # THEN it is not sent; it is dead-lettered at once with the reason, and acknowledged
    assert failures == []
    assert accepted_sends(fake_cio) == 1
    [dead] = stack.receive(stack.email_dlq_url)
    attributes = {name: value["StringValue"] for name, value in dead["MessageAttributes"].items()}
    assert "already used for a different message" in attributes["FailureReason"]
    assert attributes["FailureStatus"] == "422"
    assert attributes["SourceMessageId"] == message_id
    assert attributes["IdempotencyKey"] == "order-1042"


def test_api_send_deferred_then_delivered_from_queue_is_recorded_under_its_key(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an API send deferred because Customer.io answered 503
    fake_cio.fail(PATH, Fault(status=503))
    status, deferred = post(WELCOME, lambda_context, key="welcome-user-1")
    assert status == 202

    # WHEN EmailQueue delivers it
    event = receive_event(stack)
    assert [r["messageId"] for r in event["Records"]] == [deferred["message_id"]]
    assert deliver(event, lambda_context) == []

    # AND the caller retries the original API call
    status, answer = post(WELCOME, lambda_context, key="welcome-user-1")

    # THEN the retry answers with the delivery id of the queued send, and Customer.io saw one send
    [sent] = fake_cio.emails
    assert status == 200
    assert answer["delivery_id"] == sent["delivery_id"]
    assert accepted_sends(fake_cio) == 1


def test_api_retry_while_deferred_sends_once_across_api_and_queue(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an API send deferred to the queue
    fake_cio.fail(PATH, Fault(status=503))
    post(WELCOME, lambda_context, key="welcome-user-1")

    # WHEN the caller retries before the queue delivered it, and Customer.io is back
    status, answer = post(WELCOME, lambda_context, key="welcome-user-1")
    # AND the queued copy is delivered afterwards
    failures = deliver(receive_event(stack), lambda_context)

    # THEN the retry sent it, the queued copy found the key done, and Customer.io saw one send
    assert status == 200
    assert failures == []
    assert [e["delivery_id"] for e in fake_cio.emails] == [answer["delivery_id"]]


def test_duplicate_while_a_send_is_in_progress_is_409_on_api_and_retried_on_sqs(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a queued send with key "order-1042" that Customer.io is slow to answer
    fake_cio.fail(PATH, Fault(delay=1.0))
    enqueue(stack, WELCOME, key="order-1042")
    event = receive_event(stack)
    worker = threading.Thread(target=deliver, args=(event, LambdaContext()))
    worker.start()
    assert fake_cio.wait_for(lambda: fake_cio.request_count == 1)
    # (the in-flight record expires with the invocation, so a killed send does not block its key for a day)
    [in_flight] = boto3.client("dynamodb", region_name=REGION).scan(TableName=stack.idempotency_table)[
        "Items"
    ]
    assert in_flight["status"]["S"] == "INPROGRESS"
    assert "in_progress_expiration" in in_flight

    try:
        # WHEN the same key arrives over the API, and over the queue beside an unrelated email
        status, answer = post(WELCOME, lambda_context, key="order-1042")
        duplicate_id = enqueue(stack, WELCOME, key="order-1042")
        enqueue(stack, {**WELCOME, "identifiers": {"id": "user-2"}}, key="order-1043")
        failures = deliver(receive_event(stack), lambda_context)
    finally:
        worker.join()

    # THEN the API answers 409 (retry later); the queued duplicate is retried, not dead-lettered
    assert status == 409
    assert answer["code"] == "idempotency_in_progress"
    assert failures == [duplicate_id]
    assert stack.receive(stack.email_dlq_url) == []
    # AND Customer.io saw the first send and the unrelated one, not the duplicate
    assert [e["json"]["identifiers"]["id"] for e in fake_cio.emails] == ["user-1", "user-2"]
    assert record_statuses(stack) == ["COMPLETED", "COMPLETED"]
