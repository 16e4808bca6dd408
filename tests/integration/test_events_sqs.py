"""EventsFunction behind EventsQueue: delivery to the Pipelines API and every row of the delivery policy.

Messages go through real (moto) queues: a producer sends them, the test receives them the way Lambda's
event source mapping does (real receipt handles), invokes the real handler, then reads what the fake
Customer.io received, what is left on EventsQueue (and how long it stays invisible), and what is in
EventsDeadLetterQueue.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import PIPELINES_KEY, Stack
from tests.integration import (
    bodies,
    call_api,
    captured_logs,
    events_handler,
    metrics_from,
    poll,
    receive_all,
    send_bodies,
    visibility_calls,
)
from tests.integration import configure as set_parameters
from tests.support import LambdaContext, api_event, sqs_event

Configure = Callable[..., None]
MAX_VISIBILITY = 43_200


@pytest.fixture
def configure(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Configure:
    """Set template parameters (environment variables) for this test."""
    return functools.partial(set_parameters, monkeypatch)


def identify(user: str, **extra: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": {"plan": "pro"}, **extra}


def bulky_traits(size: int = 30_000) -> dict[str, str]:
    """About `size` bytes of traits within Journeys' limits (values of at most 1000 bytes)."""
    return {f"t{k}": "x" * 900 for k in range(size // 900)}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    return receive_all(stack, stack.events_dlq_url)


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


def batch_requests(fake: FakeCustomerIO) -> list[Any]:
    return fake.requests_to("/v1/batch")


# ---- delivered -------------------------------------------------------------------------------


def test_one_hundred_records_go_out_in_one_batch_request(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a producer put 100 calls on EventsQueue (no messageId of their own)
    calls = [identify(f"user-{i}") for i in range(100)]
    sqs_ids = send_bodies(stack, stack.events_queue_url, calls)

    # WHEN one invocation receives all 100 records
    result = poll(stack, lambda_context, max_records=100)

    # THEN every record succeeded
    assert len(result.records) == 100
    assert result.response == {"batchItemFailures": []}
    # AND Customer.io got exactly one strict /v1/batch request with the relay's Basic key
    [request] = fake_cio.requests
    assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
    assert request.headers["authorization"] == basic(PIPELINES_KEY)
    assert request.headers["x-strict-mode"] == "1"
    assert request.headers["content-type"] == "application/json"
    # AND it held the 100 calls as sent, each with a messageId
    sent = request.json["batch"]
    assert sorted(c["userId"] for c in sent) == sorted(c["userId"] for c in calls)
    assert all(c["type"] == "identify" and c["traits"] == {"plan": "pro"} for c in sent)
    assert len({c["messageId"] for c in sent}) == 100
    # AND the queue is empty (the event source deletes what succeeded), the DLQ too
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}
    assert dead_letters(stack) == []
    assert set(sqs_ids) == {r["messageId"] for r in result.records}
    # AND the metrics count the records and the one request
    metrics = metrics_from(capsys.readouterr().out)
    assert metrics["Forwarded"] == 100
    assert metrics["CustomerIORequests"] == 1
    assert "CustomerIOLatency" in metrics


def test_calls_accepted_by_the_api_reach_customerio_with_the_same_message_id(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the API accepted a track call and a deletion
    track = call_api(
        api_event("POST", "/v1/track", {"userId": "u1", "event": "order_completed"}), lambda_context
    )
    delete = call_api(
        api_event("DELETE", "/v1/customers/u1", resource="/v1/customers/{id}", path_parameters={"id": "u1"}),
        lambda_context,
    )

    # WHEN EventsQueue is polled
    result = poll(stack, lambda_context)

    # THEN both calls reached Customer.io with the messageIds the API answered
    assert result.failed_ids == []
    by_id = {c["messageId"]: c for c in fake_cio.pipelines_calls()}
    assert by_id[track.body["call_ids"][0]]["event"] == "order_completed"
    deletion = by_id[delete.body["call_ids"][0]]
    assert deletion.pop("timestamp").endswith("Z")  # the accept time (tests/integration/test_event_time.py)
    assert deletion == {
        "type": "track",
        "event": "User Deleted",
        "userId": "u1",
        "messageId": delete.body["call_ids"][0],
    }


def test_batch_body_on_the_queue_is_delivered_with_stable_message_ids(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer wrote a {"batch": [...]} body, one call with its own messageId
    body = {
        "batch": [identify("u1"), {"type": "track", "userId": "u1", "event": "e", "messageId": "own-id"}],
        "context": {"app": {"name": "shop"}},
    }
    [sqs_id] = send_bodies(stack, stack.events_queue_url, [body])

    # WHEN it is delivered
    poll(stack, lambda_context)

    # THEN both calls went out, context folded in, the own messageId kept and the other derived from the
    # SQS message id (so a redelivery of the message carries the same one)
    first, second = fake_cio.pipelines_calls()
    assert first["context"] == second["context"] == {"app": {"name": "shop"}}
    assert second["messageId"] == "own-id"
    namespace = uuid.UUID("8b0c1f0e-6c4f-4a53-9d53-6f8f2b0c1e01")
    assert first["messageId"] == str(uuid.uuid5(namespace, f"{sqs_id}/0"))


def test_message_id_is_stable_across_a_retry(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN a 1 s backoff base, a call without a messageId, and Customer.io failing once with 503
    configure(RETRY_BASE_SECONDS="1", RETRY_CAP_SECONDS="1")
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=503))

    # WHEN the record fails, waits out its visibility timeout and is delivered again
    first = poll(stack, lambda_context)
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}
    time.sleep(1.2)
    second = poll(stack, lambda_context)

    # THEN the first attempt failed the invocation, the second succeeded on the second receive
    assert isinstance(first.error, BatchProcessingError)
    assert second.response == {"batchItemFailures": []}
    assert second.records[0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert second.records[0]["messageId"] == first.records[0]["messageId"]
    # AND both requests carried the same messageId
    sent = [r.json["batch"][0]["messageId"] for r in batch_requests(fake_cio)]
    assert [r.status for r in batch_requests(fake_cio)] == [503, 200]
    assert sent[0] == sent[1]
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}


# ---- retryable -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=429), Fault(status=408), Fault(drop=True)])
def test_retryable_failure_backs_off_with_visibility_and_reports_the_record(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    configure: Configure,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
) -> None:
    # GIVEN base 30 s / cap 900 s, a record received for the third time, and one poison record beside it
    configure(RETRY_BASE_SECONDS="30", RETRY_CAP_SECONDS="900")
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    for _ in range(2):  # two earlier receives that ended at once
        stack.receive(stack.events_queue_url, visibility=0)
    send_bodies(stack, stack.events_queue_url, ["not json"])
    fake_cio.fail("/v1/batch", fault, fault)

    # WHEN the batch is handled
    with visibility_calls() as visibility, captured_logs() as logs:
        result = poll(stack, lambda_context)

    # THEN only the retryable record is reported, with a visibility in [1, min(900, 30 * 2**2)]
    retried = next(r for r in result.records if r["body"] != "not json")
    assert retried["attributes"]["ApproximateReceiveCount"] == "3"
    assert result.failed_ids == [retried["messageId"]]
    [seconds] = visibility.timeouts
    assert 1 <= seconds <= 120
    assert visibility.calls[0]["ReceiptHandle"] == retried["receiptHandle"]
    # AND it is still on the queue, invisible; the poison record went to the DLQ
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}
    assert len(dead_letters(stack)) == 1
    # AND the retry is logged under the record's messageId and counted
    [line] = [x for x in logs.lines if x["message"] == "record will be retried"]
    assert line["correlation_id"] == retried["messageId"]
    assert line["delay_seconds"] == seconds
    metrics = metrics_from(capsys.readouterr().out)
    assert (metrics["Retried"], metrics["DeadLettered"]) == (1, 1)


def test_backoff_comes_back_after_its_delay(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN a 1 s base and Customer.io down for the first attempt
    configure(RETRY_BASE_SECONDS="1", RETRY_CAP_SECONDS="1")
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=500))

    # WHEN the record fails
    with visibility_calls() as visibility:
        poll(stack, lambda_context)
    assert visibility.timeouts == [1]

    # THEN it is invisible until the chosen delay has passed, then visible again
    assert stack.receive(stack.events_queue_url) == []
    time.sleep(1.3)
    assert len(stack.receive(stack.events_queue_url)) == 1


def test_retry_after_longer_than_backoff_sets_the_visibility(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN a 1 s backoff and Customer.io answering 429 with Retry-After: 120
    configure(RETRY_BASE_SECONDS="1", RETRY_CAP_SECONDS="1")
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=429, retry_after="120"))

    # WHEN the record is handled
    with visibility_calls() as visibility:
        result = poll(stack, lambda_context)

    # THEN the record waits the 120 s Customer.io asked for
    assert visibility.timeouts == [120]
    assert isinstance(result.error, BatchProcessingError)
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}


@pytest.mark.parametrize(
    ("env", "retry_after"),
    [
        ({"RETRY_BASE_SECONDS": "1", "RETRY_CAP_SECONDS": "1"}, "100000"),
        ({"RETRY_BASE_SECONDS": "43200", "RETRY_CAP_SECONDS": "43200"}, None),
    ],
    ids=["retry-after", "backoff"],
)
def test_visibility_never_exceeds_12_hours(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    configure: Configure,
    env: dict[str, str],
    retry_after: str | None,
) -> None:
    # GIVEN a Retry-After of 27 hours, or the largest backoff allowed on a 5th receive (maxReceiveCount)
    configure(**env)
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    for _ in range(4):
        stack.receive(stack.events_queue_url, visibility=0)
    fake_cio.fail("/v1/batch", Fault(status=503, retry_after=retry_after))

    # WHEN the record fails
    with visibility_calls() as visibility:
        poll(stack, lambda_context)

    # THEN the visibility asked of SQS stays within 12 h of the receive (SQS's own limit), less the
    # function's timeout (30 s here) the receive may have preceded this invocation by, and SQS took it
    assert len(visibility.timeouts) == 1
    assert 1 <= visibility.timeouts[0] <= MAX_VISIBILITY - 30
    if retry_after is not None:
        assert visibility.timeouts[0] >= MAX_VISIBILITY - 30 - 5
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}


def test_failed_visibility_change_still_reports_the_record(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a record whose receipt handle SQS no longer accepts, and a poison record beside it
    event = sqs_event([json.dumps(identify("u1")), "not json"], queue_arn=stack.events_queue_arn)
    stale = event["Records"][0]
    fake_cio.fail("/v1/batch", Fault(status=503))

    # WHEN the batch is handled
    with visibility_calls() as visibility, captured_logs() as logs:
        response = events_handler()(event, lambda_context)

    # THEN the visibility call was tried and failed, and the record is still reported as failed
    assert len(visibility.calls) == 1
    assert "change visibility failed" in logs.messages("WARNING")
    assert response == {"batchItemFailures": [{"itemIdentifier": stale["messageId"]}]}


# ---- permanent -------------------------------------------------------------------------------


POISON = [
    pytest.param("{not json", "body: message body is not valid JSON", id="invalid-json"),
    pytest.param("[1, 2]", "body: message body must be a JSON object", id="not-an-object"),
    pytest.param(json.dumps({"type": "identify", "traits": {}}), "userId", id="no-user-id"),
    pytest.param(json.dumps({"type": "purchase", "userId": "u1"}), "type", id="unknown-type"),
    pytest.param(json.dumps({"type": "track", "userId": "u1"}), "event", id="track-no-event"),
    pytest.param(json.dumps({"batch": []}), "batch", id="empty-batch"),
    pytest.param(
        json.dumps({"type": "identify", "userId": "u1", "traits": {"b": "x" * 33_000}}),
        "32768",
        id="call-over-32KB",
    ),
]


@pytest.mark.parametrize(("body", "reason"), POISON)
def test_poison_record_is_dead_lettered_with_its_reason_and_acknowledged(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
    body: str,
    reason: str,
) -> None:
    # GIVEN a poison message (with an attribute of its own) next to a good one
    stack.sqs.send_message(
        QueueUrl=stack.events_queue_url,
        MessageBody=body,
        MessageAttributes={"Source": {"DataType": "String", "StringValue": "billing"}},
    )
    send_bodies(stack, stack.events_queue_url, [identify("u1")])

    # WHEN the batch is handled
    result = poll(stack, lambda_context)

    # THEN nothing is reported failed: the poison record is acknowledged, the good one delivered
    assert result.response == {"batchItemFailures": []}
    assert [c["userId"] for c in fake_cio.pipelines_calls()] == ["u1"]
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}
    # AND the DLQ holds the poison body as sent, with the reason, status and origin
    [dead] = dead_letters(stack)
    poisoned = next(r for r in result.records if r["body"] == body)
    assert dead["Body"] == body
    attrs = attributes(dead)
    assert reason in attrs["FailureReason"]
    assert attrs["FailureStatus"] in ("400", "413")
    assert attrs["SourceMessageId"] == poisoned["messageId"]
    assert attrs["ReceiveCount"] == "1"
    assert attrs["Source"] == "billing"
    assert metrics_from(capsys.readouterr().out)["DeadLettered"] == 1


REFUSAL = "traits.plan: value is not allowed"


def test_customerio_400_on_a_single_record_request_dead_letters_it(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a call that passes the relay's checks but that Customer.io refuses
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=400, body={"meta": {"errors": [REFUSAL]}}))

    # WHEN it is handled
    result = poll(stack, lambda_context)

    # THEN Customer.io answered 400 once and the record is in the DLQ with Customer.io's reason
    assert [r.status for r in fake_cio.requests] == [400]
    assert result.response == {"batchItemFailures": []}
    [dead] = dead_letters(stack)
    attrs = attributes(dead)
    assert attrs["FailureStatus"] == "400"
    assert REFUSAL in attrs["FailureReason"]
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}


def test_400_on_a_batch_falls_back_to_one_request_per_record(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN three records, the middle one refused by Customer.io (the packed request, then u2 alone)
    send_bodies(stack, stack.events_queue_url, [identify("u1"), identify("u2"), identify("u3")])
    refused = Fault(status=400, body={"meta": {"errors": [REFUSAL]}})
    fake_cio.fail("/v1/batch", refused, Fault(), refused, Fault())

    # WHEN they are handled
    result = poll(stack, lambda_context)

    # THEN the packed request got 400, then each record was sent on its own
    assert [(len(r.json["batch"]), r.status) for r in batch_requests(fake_cio)] == [
        (3, 400),
        (1, 200),
        (1, 400),
        (1, 200),
    ]
    # AND the good records are delivered, the bad one dead-lettered, nothing reported failed
    assert sorted(c["userId"] for c in fake_cio.pipelines_calls()) == ["u1", "u3"]
    assert result.response == {"batchItemFailures": []}
    [dead] = dead_letters(stack)
    assert json.loads(dead["Body"])["userId"] == "u2"


def test_400_on_a_batch_with_only_good_records_delivers_them_one_by_one(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io refuses the packed request once
    send_bodies(stack, stack.events_queue_url, [identify("u1"), identify("u2")])
    fake_cio.fail("/v1/batch", Fault(status=400))

    # WHEN they are handled
    result = poll(stack, lambda_context)

    # THEN both were sent again on their own and delivered; nothing is dead-lettered
    assert [r.status for r in batch_requests(fake_cio)] == [400, 200, 200]
    assert sorted(c["userId"] for c in fake_cio.pipelines_calls()) == ["u1", "u2"]
    assert result.response == {"batchItemFailures": []}
    assert dead_letters(stack) == []


def test_400_fallback_resends_only_the_calls_of_the_refused_request(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN three queue messages of six ~30 KB calls each and one small call: two /v1/batch requests,
    # the third message's calls split across both; Customer.io accepts the first and refuses the second
    def call(user: str) -> dict[str, Any]:
        return {"type": "track", "userId": user, "event": "viewed", "properties": {"blob": "x" * 30_000}}

    messages: list[Any] = [{"batch": [call(f"r{r}-c{c}") for c in range(6)]} for r in range(3)]
    send_bodies(stack, stack.events_queue_url, [*messages, identify("small")])
    fake_cio.fail("/v1/batch", Fault(), Fault(status=400, body={"meta": {"errors": [REFUSAL]}}))

    # WHEN one invocation handles all four
    result = poll(stack, lambda_context)

    # THEN the refused request held calls of a message whose other calls the first request delivered
    first, refused, *resent = batch_requests(fake_cio)
    assert (first.status, refused.status) == (200, 400)
    in_first = {c["userId"] for c in first.json["batch"]}
    in_refused = {c["userId"] for c in refused.json["batch"]}
    assert {u.split("-")[0] for u in in_first} & {u.split("-")[0] for u in in_refused} == {"r2"}
    # AND only the refused request's calls were sent again, one per request
    assert [len(r.json["batch"]) for r in resent] == [1] * len(in_refused)
    assert {r.json["batch"][0]["userId"] for r in resent} == in_refused
    # AND every call reached Customer.io exactly once; nothing failed, nothing dead-lettered
    delivered = [c["messageId"] for c in fake_cio.pipelines_calls()]
    assert len(delivered) == len(set(delivered)) == 19
    assert result.response == {"batchItemFailures": []}
    assert dead_letters(stack) == []


def test_call_refused_alone_dead_letters_only_that_call_of_its_message(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a queue message of three calls; Customer.io refuses the packed request, then the second call
    send_bodies(stack, stack.events_queue_url, [{"batch": [identify("u1"), identify("u2"), identify("u3")]}])
    refusal = Fault(status=400, body={"meta": {"errors": [REFUSAL]}})
    fake_cio.fail("/v1/batch", refusal, Fault(), refusal, Fault())

    # WHEN it is handled
    result = poll(stack, lambda_context)

    # THEN u1 and u3 are delivered once, and the dead-letter copy holds u2 alone, with the reason
    assert sorted(c["userId"] for c in fake_cio.pipelines_calls()) == ["u1", "u3"]
    assert result.response == {"batchItemFailures": []}
    [dead] = dead_letters(stack)
    assert [c["userId"] for c in json.loads(dead["Body"])["batch"]] == ["u2"]
    attrs = attributes(dead)
    assert REFUSAL in attrs["FailureReason"]
    assert "1 of 3 calls refused" in attrs["FailureReason"]
    assert attrs["FailureStatus"] == "400"


def test_event_name_policy_reject_dead_letters_on_the_queue_side(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN EVENT_NAME_POLICY=reject and a producer that wrote a Title Case event and a semantic one
    configure(EVENT_NAME_POLICY="reject")
    send_bodies(
        stack,
        stack.events_queue_url,
        [
            {"type": "track", "userId": "u1", "event": "Order Completed"},
            {"type": "track", "userId": "u1", "event": "User Deleted"},
        ],
    )

    # WHEN they are handled
    result = poll(stack, lambda_context)

    # THEN the semantic event is delivered and the other dead-lettered, naming the rule
    assert result.response == {"batchItemFailures": []}
    assert [c["event"] for c in fake_cio.pipelines_calls()] == ["User Deleted"]
    [dead] = dead_letters(stack)
    assert "snake_case" in attributes(dead)["FailureReason"]


# ---- auth ------------------------------------------------------------------------------------


def test_auth_failure_rereads_the_secret_and_retries_at_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the function cached the Pipelines key, then the key was rotated in the secret and at Customer.io
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    assert poll(stack, lambda_context).failed_ids == []
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.secret_arn, SecretString=json.dumps({"pipelines_api_key": "pk-2", "app_api_key": "a"})
    )
    fake_cio.pipelines_api_key = "pk-2"
    send_bodies(stack, stack.events_queue_url, [identify("u2")])

    # WHEN the next record is handled
    with visibility_calls() as visibility:
        result = poll(stack, lambda_context)

    # THEN the 401 made it re-read the secret and retry at once, with the new key, successfully
    assert result.response == {"batchItemFailures": []}
    assert [(r.status, r.headers["authorization"]) for r in fake_cio.requests[1:]] == [
        (401, basic(PIPELINES_KEY)),
        (200, basic("pk-2")),
    ]
    assert visibility.calls == []
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 0}


def test_auth_failure_that_persists_backs_off_and_drops_nothing(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io refuses the key and the secret still holds it
    fake_cio.pipelines_api_key = "a-key-the-operator-has-not-stored-yet"
    send_bodies(stack, stack.events_queue_url, [identify("u1")])

    # WHEN the record is handled
    with visibility_calls() as visibility:
        result = poll(stack, lambda_context)

    # THEN two attempts (before and after re-reading the secret), then backoff; nothing dead-lettered
    assert [r.status for r in fake_cio.requests] == [401, 401]
    assert isinstance(result.error, BatchProcessingError)
    assert len(visibility.timeouts) == 1
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}
    assert dead_letters(stack) == []


# ---- whole-batch outcomes and the time guard -------------------------------------------------


def test_all_records_failing_fails_the_invocation(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io is down
    fake_cio.outage(True)
    send_bodies(stack, stack.events_queue_url, [identify("u1"), identify("u2"), identify("u3")])

    # WHEN the batch is handled
    with visibility_calls() as visibility:
        result = poll(stack, lambda_context)

    # THEN the invocation raises (so Lambda slows its polling), each record got its backoff first
    assert isinstance(result.error, BatchProcessingError)
    assert len(visibility.calls) == 3
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 3}
    assert dead_letters(stack) == []


def test_retryable_failure_applies_to_every_record_of_that_request_only(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN 20 records of about 30 KB: two /v1/batch requests, the first of which fails with 503
    payloads = [identify(f"u{i}", traits=bulky_traits()) for i in range(20)]
    send_bodies(stack, stack.events_queue_url, payloads)
    fake_cio.fail("/v1/batch", Fault(status=503))

    # WHEN one invocation handles all 20
    result = poll(stack, lambda_context, max_records=20)

    # THEN the records of the failed request are reported, those of the delivered one are not
    first, second = batch_requests(fake_cio)
    assert (first.status, second.status) == (503, 200)
    assert max(len(first.body), len(second.body)) <= 500_000
    failed_users = {
        json.loads(r["body"])["userId"] for r in result.records if r["messageId"] in result.failed_ids
    }
    assert failed_users == {c["userId"] for c in first.json["batch"]}
    assert {c["userId"] for c in fake_cio.pipelines_calls()} == {c["userId"] for c in second.json["batch"]}
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": len(failed_users)}


def test_no_request_is_started_when_time_is_short(
    stack: Stack, fake_cio: FakeCustomerIO, configure: Configure
) -> None:
    # GIVEN an invocation with 1 s left (a request may take connect + read timeout, here 3 s)
    send_bodies(stack, stack.events_queue_url, [identify("u1"), identify("u2")])
    context = LambdaContext(remaining_ms=1_000)

    # WHEN the batch is handled
    with visibility_calls() as visibility:
        result = poll(stack, context)

    # THEN Customer.io is not called; both records are reported and visible again at once
    assert fake_cio.requests == []
    assert isinstance(result.error, BatchProcessingError)
    assert visibility.timeouts == [0, 0]
    assert len(receive_all(stack, stack.events_queue_url)) == 2


class Clock(LambdaContext):
    """A context whose remaining time really runs down, from `budget_ms` at the first question."""

    def __init__(self, budget_ms: int) -> None:
        super().__init__()
        self._budget = budget_ms / 1000
        self._deadline: float | None = None

    def get_remaining_time_in_millis(self) -> int:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._budget
        return int((self._deadline - time.monotonic()) * 1000)


def test_records_not_attempted_when_time_runs_out_come_back(
    stack: Stack, fake_cio: FakeCustomerIO, configure: Configure
) -> None:
    # GIVEN two requests' worth of records sent one after the other, 4.8 s left, and a first request
    # that takes 0.6 s (a request is started only with connect + read timeout + 1 s + the time failure
    # handling of 20 records may need, 0.3 s = 4.3 s to spare)
    configure(EVENTS_SEND_CONCURRENCY="1")
    payloads = [identify(f"u{i}", traits=bulky_traits()) for i in range(20)]
    send_bodies(stack, stack.events_queue_url, payloads)
    fake_cio.fail("/v1/batch", Fault(delay=0.6))

    # WHEN one invocation handles them
    with visibility_calls() as visibility:
        result = poll(stack, Clock(4_800), max_records=20)

    # THEN only the first request was made; its records are done, the others reported with no delay
    [request] = fake_cio.requests
    delivered = {c["userId"] for c in request.json["batch"]}
    assert result.response is not None
    failed = {json.loads(r["body"])["userId"] for r in result.records if r["messageId"] in result.failed_ids}
    assert failed == {f"u{i}" for i in range(20)} - delivered
    assert set(visibility.timeouts) == {0}
    # AND they are on the queue again, ready for the next invocation
    assert {json.loads(m["Body"])["userId"] for m in receive_all(stack, stack.events_queue_url)} == failed


def test_redrive_keeps_a_record_that_keeps_failing(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN no backoff (so the test need not wait) and Customer.io down for good
    configure(RETRY_BASE_SECONDS="0", RETRY_CAP_SECONDS="0")
    fake_cio.outage(True)
    send_bodies(stack, stack.events_queue_url, [identify("u1")])

    # WHEN EventsQueue is polled more times than maxReceiveCount (5)
    polls = [poll(stack, lambda_context) for _ in range(6)]

    # THEN five attempts were made and SQS then moved the message to the DLQ: nothing is lost
    assert [len(p.records) for p in polls] == [1, 1, 1, 1, 1, 0]
    assert len(fake_cio.requests) == 5
    assert bodies(dead_letters(stack)) == [identify("u1")]


# ---- observability ---------------------------------------------------------------------------


def test_record_logs_carry_the_message_id_and_no_personal_data(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a poison record and an email-shaped userId
    send_bodies(stack, stack.events_queue_url, ["{oops", identify("ada@example.com")])

    # WHEN they are handled
    with captured_logs() as logs:
        result = poll(stack, lambda_context)

    # THEN the dead-letter line carries the poison record's messageId as correlation id
    poison = next(r for r in result.records if r["body"] == "{oops")
    [line] = [x for x in logs.lines if x["message"] == "record dead-lettered"]
    assert line["correlation_id"] == poison["messageId"]
    # AND the email warning is tied to its record, without the address
    good = next(r for r in result.records if r["body"] != "{oops")
    [warning] = [x for x in logs.lines if "email" in x["message"]]
    assert warning["correlation_id"] == good["messageId"]
    assert "ada@example.com" not in logs.text()
