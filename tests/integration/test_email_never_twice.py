"""Never resend what Customer.io accepted; the relay's own retries keyed by SQS message id; unknown
outcomes under both EMAIL_ON_AMBIGUOUS policies; many sends at a time, none twice, none lost."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import threading
import time
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.awsrequest import AWSResponse, HTTPHeaders
from cio_relay import transactional
from cio_relay.errors import SendInProgress
from cio_relay.models.email import SendEmail

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import Stack, reset_caches
from tests.support import REGION, LambdaContext, api_event, load_function, sqs_records_from

PATH = "/v1/send/email"
WELCOME: dict[str, Any] = {
    "transactional_message_id": "welcome",
    "to": "ada@example.com",
    "identifiers": {"id": "user-1"},
}


def post(body: Any, context: LambdaContext, *, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key is not None else None
    answer = load_function("email").lambda_handler(api_event("POST", PATH, body, headers=headers), context)
    return answer["statusCode"], json.loads(answer["body"])


def enqueue(stack: Stack, body: dict[str, Any], **attributes: str) -> str:
    encoded = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
    answer = stack.sqs.send_message(
        QueueUrl=stack.email_queue_url, MessageBody=json.dumps(body), MessageAttributes=encoded
    )
    return str(answer["MessageId"])


def receive_event(stack: Stack, url: str | None = None) -> dict[str, Any]:
    return sqs_records_from(stack.receive(url or stack.email_queue_url), stack.email_queue_arn)


def deliver(event: dict[str, Any], context: LambdaContext) -> list[str]:
    answer = load_function("email").lambda_handler(event, context)
    return [failure["itemIdentifier"] for failure in answer["batchItemFailures"]]


def sends(fake: FakeCustomerIO, path: str = PATH) -> int:
    """Requests Customer.io answered with a 2xx: what it took as sent."""
    return sum(1 for r in fake.requests_to(path) if r.status is not None and 200 <= r.status < 300)


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    return [
        {"body": m["Body"], **{k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}}
        for m in stack.receive(stack.email_dlq_url)
    ]


def table_items(stack: Stack) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = boto3.client("dynamodb", region_name=REGION).scan(
        TableName=stack.idempotency_table
    )["Items"]
    return items


def throttle_completion_writes(times: int) -> list[str]:
    """Make the idempotency table refuse the next `times` completion writes (UpdateItem) as throttled."""
    refused: list[str] = []

    def refuse(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if len(refused) >= times:
            return None
        refused.append(kwargs["model"].name)
        error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"}}
        return AWSResponse("https://dynamodb", 400, HTTPHeaders(), None), {
            **error,
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    hook: Any = refuse  # a before-call handler that answers short-circuits the call
    transactional.dynamodb_client().meta.events.register("before-call.dynamodb.UpdateItem", hook)
    return refused


# --- Customer.io's 2xx is final -----------------------------------------------------------------


def test_completion_write_failing_after_a_send_still_answers_200_and_sends_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the table throttles the completion write once, after Customer.io accepted the send
    refused = throttle_completion_writes(1)

    # WHEN a caller sends with a key, and retries it
    status, answer = post(WELCOME, lambda_context, key="k-1")
    again_status, again = post(WELCOME, lambda_context, key="k-1")

    # THEN the send stands (200, its delivery id), the write alone was tried again and completed,
    # and the retry is a replay: Customer.io saw one send
    assert refused == ["UpdateItem"]
    assert (status, again_status) == (200, 200)
    assert (
        again
        == answer
        == {"delivery_id": fake_cio.emails[0]["delivery_id"], "queued_at": answer["queued_at"]}
    )
    assert sends(fake_cio) == 1
    assert [i["status"]["S"] for i in table_items(stack)] == ["COMPLETED"]


def test_completion_write_failing_for_good_acknowledges_the_queued_send(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the table refuses every completion write, and a queued email
    throttle_completion_writes(100)
    enqueue(stack, WELCOME, IdempotencyKey="k-1")
    event = receive_event(stack)

    # WHEN it is delivered, and SQS delivers the same record again
    first = deliver(event, lambda_context)
    with pytest.raises(BatchProcessingError) as second:
        deliver(event, lambda_context)

    # THEN the record is acknowledged (not retried, not dead-lettered), and it was sent once: the key
    # stays in progress, so the redelivery is backed off instead of sent again
    assert first == []
    assert isinstance(second.value.child_exceptions[0][1], SendInProgress)
    assert dead_letters(stack) == []
    assert sends(fake_cio) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault(status=202, body={}), Fault(status=200, body={"delivery_id": "d-9", "queued_at": 1.7e9 + 0.5})],
    ids=["proxy-202-empty", "float-queued_at"],
)
def test_a_2xx_the_model_would_not_expect_is_a_send(
    fault: Fault, stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io (or a proxy) answers 2xx with an odd body, to a queued email and to an API send
    fake_cio.fail(PATH, fault, fault)
    enqueue(stack, WELCOME, IdempotencyKey="queued-1")
    event = receive_event(stack)

    # WHEN the queued one is delivered twice (a redelivery) and the API one is sent
    assert deliver(event, lambda_context) == []
    assert deliver(event, lambda_context) == []
    status, answer = post({**WELCOME, "identifiers": {"id": "user-2"}}, lambda_context, key="api-1")

    # THEN each is done after one request: acknowledged, answered 200 with what came back
    assert status == 200
    assert answer.get("delivery_id") == (fault.body or {}).get("delivery_id")
    assert len(fake_cio.requests_to(PATH)) == 2
    assert dead_letters(stack) == []


# --- 403: a forbidden attachment file type -----------------------------------------------------

FORBIDDEN = Fault(status=403, body={"meta": {"error": "Forbidden file type"}})
WITH_EXE = {**WELCOME, "attachments": {"setup.exe": base64.b64encode(b"MZ").decode()}}


def test_forbidden_attachment_type_is_403_to_the_caller_without_a_secret_re_read(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io refuses the attachment's file type
    fake_cio.fail(PATH, FORBIDDEN)

    # WHEN a caller sends it
    status, answer = post(WITH_EXE, lambda_context, key="k-1")

    # THEN 403 with Customer.io's reason; one request (no re-read and retry), nothing queued
    assert status == 403
    assert answer["code"] == "customerio_attachment_refused"
    assert "Forbidden file type" in answer["message"]
    assert len(fake_cio.requests_to(PATH)) == 1
    assert stack.receive(stack.email_queue_url) == []


def test_forbidden_attachment_type_on_the_queue_is_dead_lettered_at_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a queued email whose attachment Customer.io refuses
    fake_cio.fail(PATH, FORBIDDEN)
    message_id = enqueue(stack, WITH_EXE)

    # WHEN it is delivered
    failures = deliver(receive_event(stack), lambda_context)

    # THEN it is dead-lettered on the first receive with the reason, after a single request
    assert failures == []
    [dead] = dead_letters(stack)
    assert dead["FailureStatus"] == "403"
    assert "Forbidden file type" in dead["FailureReason"]
    assert dead["SourceMessageId"] == message_id
    assert len(fake_cio.requests_to(PATH)) == 1


# --- without a key: the relay's own retries are one send, deliberate repeats are not -----------


def test_two_identical_queued_emails_without_a_key_are_two_sends(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer deliberately wrote the same email twice, without keys
    enqueue(stack, WELCOME)
    enqueue(stack, WELCOME)

    # WHEN the batch is delivered
    failures = deliver(receive_event(stack), lambda_context)

    # THEN both are sent
    assert failures == []
    assert sends(fake_cio) == 2


def test_a_redriven_dead_letter_copy_keeps_the_original_message_id_as_its_key(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a queued email without a key that was sent (its record names its SQS message id)
    original = enqueue(stack, WELCOME)
    assert deliver(receive_event(stack), lambda_context) == []

    # WHEN a copy of it comes back with the lineage attribute a dead-letter copy carries (a redrive)
    enqueue(stack, WELCOME, SourceMessageId=original)
    failures = deliver(receive_event(stack), lambda_context)

    # THEN the copy is recognised as the same message: acknowledged, not sent again
    assert failures == []
    assert sends(fake_cio) == 1


def test_api_send_deferred_without_a_key_carries_a_relay_made_key_onto_the_queue(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io answers 503 to an API send without a key
    fake_cio.fail(PATH, Fault(status=503))
    status, answer = post(WELCOME, lambda_context)
    assert (status, answer["status"]) == (202, "queued")

    # WHEN the queued copy is delivered, then delivered again (SQS at-least-once)
    [message] = stack.receive(stack.email_queue_url, visibility=0)
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    event = sqs_records_from([message], stack.email_queue_arn)
    assert deliver(event, lambda_context) == []
    assert deliver(event, lambda_context) == []

    # THEN the queue message held a relay-made key and its channel, and the email was sent once
    assert attributes["IdempotencyKey"].startswith("relay:")
    assert attributes["Channel"] == "email"
    assert sends(fake_cio) == 1


# --- an unknown outcome: EMAIL_ON_AMBIGUOUS -----------------------------------------------------


@pytest.fixture
def park_unknown(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_ON_AMBIGUOUS", "dead_letter")
    monkeypatch.setenv("CUSTOMERIO_READ_TIMEOUT", "0.3")
    reset_caches()


def test_dead_letter_policy_parks_a_timed_out_queued_send_with_outcome_unknown(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, park_unknown: None
) -> None:
    # GIVEN Customer.io takes a queued email but answers after the read timeout
    fake_cio.fail(PATH, Fault(delay=1.0))
    message_id = enqueue(stack, WELCOME, IdempotencyKey="k-1")

    # WHEN it is delivered
    failures = deliver(receive_event(stack), lambda_context)

    # THEN it is not sent again: it is dead-lettered at once with reason "outcome unknown", and its key
    # is free so that a person's redrive sends it
    assert failures == []
    [dead] = dead_letters(stack)
    assert dead["FailureReason"].startswith("outcome unknown")
    assert dead["FailureStatus"] == "outcome_unknown"
    assert (dead["SourceMessageId"], dead["IdempotencyKey"]) == (message_id, "k-1")
    assert fake_cio.wait_for(lambda: len(fake_cio.emails) == 1)
    assert table_items(stack) == []


def test_dead_letter_policy_on_the_api_answers_202_parked(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, park_unknown: None
) -> None:
    # GIVEN the connection drops after the request was sent
    fake_cio.fail(PATH, Fault(drop=True))

    # WHEN a caller sends an email
    status, answer = post(WELCOME, lambda_context, key="k-1")

    # THEN 202 says it was parked; the dead-letter queue holds it with its key; no second request
    assert (status, answer["status"], answer["reason"]) == (202, "dead_lettered", "outcome_unknown")
    [dead] = dead_letters(stack)
    assert dead["IdempotencyKey"] == "k-1"
    assert json.loads(dead["body"]) == WELCOME
    assert len(fake_cio.requests_to(PATH)) == 1


@pytest.mark.parametrize("policy", ["resend", "dead_letter"])
def test_a_send_cut_off_between_request_and_record_follows_the_policy(
    policy: str,
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an earlier invocation died after sending key "k-1": its in-progress record has expired
    monkeypatch.setenv("EMAIL_ON_AMBIGUOUS", policy)
    reset_caches()
    enqueue(stack, WELCOME, IdempotencyKey="k-1")
    event = receive_event(stack)
    record = SQSRecord(event["Records"][0])
    identity = transactional.queue_key(record, "email", SendEmail.model_validate(WELCOME), dedupe=False)
    store = transactional.get_mailer()._stores[False]
    store.save_inprogress(data=dataclasses.asdict(identity), remaining_time_in_millis=1)
    assert fake_cio.wait_for(
        lambda: time.time() * 1000 > int(table_items(stack)[0]["in_progress_expiration"]["N"])
    )

    # WHEN SQS delivers the message again
    failures = deliver(event, lambda_context)

    # THEN resend sends it again; dead_letter parks it as "outcome unknown" without sending
    assert failures == []
    if policy == "resend":
        assert sends(fake_cio) == 1
        assert dead_letters(stack) == []
    else:
        assert sends(fake_cio) == 0
        [dead] = dead_letters(stack)
        assert "cut off between sending and recording" in dead["FailureReason"]
        assert table_items(stack) == []


# --- many at a time -----------------------------------------------------------------------------


def test_a_batch_is_sent_concurrently(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Customer.io holds each answer until 5 sends are in flight at once (a barrier: a relay
    # sending one after another would break it and get 500s)
    monkeypatch.setenv("EMAIL_SEND_CONCURRENCY", "5")
    reset_caches()
    barrier = threading.Barrier(5, timeout=10)
    process = fake_cio._process

    def together(*args: Any) -> Any:
        barrier.wait()
        return process(*args)

    monkeypatch.setattr(fake_cio, "_process", together)
    for i in range(5):
        enqueue(stack, {**WELCOME, "identifiers": {"id": f"user-{i}"}})

    # WHEN the batch is delivered
    failures = deliver(receive_event(stack), lambda_context)

    # THEN all five were in flight together and each was sent once
    assert failures == []
    assert sorted(e["json"]["identifiers"]["id"] for e in fake_cio.emails) == [f"user-{i}" for i in range(5)]


def test_concurrent_batches_under_faults_send_each_email_exactly_once(
    stack: Stack, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 20 queued emails (half with keys, two sharing one key) and Customer.io failing a third of
    # the requests (429, 5xx, dropped connections before processing, slow answers)
    monkeypatch.setenv("RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("RETRY_CAP_SECONDS", "0")
    reset_caches()
    fake_cio.chaos(rate=0.35, seed=13, kinds=("429", "500", "503", "drop", "slow"))
    for i in range(20):
        key = {"IdempotencyKey": f"k-{min(i, 9)}"} if i < 11 else {}
        enqueue(stack, {**WELCOME, "identifiers": {"id": f"user-{min(i, 9) if i < 11 else i}"}}, **key)

    # WHEN Lambda keeps delivering what is on the queue until it is empty (bounded; the faults stop
    # after three rounds, before SQS's own redrive after 5 receives could take a record away)
    for round_number in range(100):
        if round_number == 3:
            fake_cio.chaos(0)
        event = receive_event(stack)
        if not event["Records"]:
            if stack.depth(stack.email_queue_url)["in_flight"] == 0:
                break
            time.sleep(0.1)  # a 429 named its window ("per 1s"): the record is back once it has passed
            continue
        failed = [r["messageId"] for r in event["Records"]]  # every record failed: they come back
        with contextlib.suppress(BatchProcessingError):
            failed = deliver(event, LambdaContext())
        for record in event["Records"]:  # what the event source mapping does with the successes
            if record["messageId"] not in failed:
                stack.sqs.delete_message(
                    QueueUrl=stack.email_queue_url, ReceiptHandle=record["receiptHandle"]
                )
    pending = stack.depth(stack.email_queue_url)

    # THEN nothing is left, nothing was dead-lettered, and each distinct email reached Customer.io once
    assert sum(fake_cio.faults_injected.values()) >= 5
    assert pending == {"visible": 0, "in_flight": 0}, f"still queued: {pending}"
    assert dead_letters(stack) == []
    ids = sorted(e["json"]["identifiers"]["id"] for e in fake_cio.emails)
    assert ids == sorted({f"user-{min(i, 9) if i < 11 else i}" for i in range(20)})
