"""Delivery under stress: partial enqueues, dead-letter copies and their redrive, last receives, day-long
Retry-After, copies that fail, and AWS endpoints that hang. Each test reproduces a failure first seen
with these fakes and moto, and asserts what the caller or the operator depends on."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from cio_relay import clients, queues
from cio_relay.credentials import CredentialsProvider
from cio_relay.delivery import MAX_REQUEUES, process_batch
from cio_relay.errors import ConfigurationError, NotAttempted, RateLimited
from cio_relay.settings import load_settings

from cio_relay_cli import dlq as cli_dlq
from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import Stack, reset_caches
from tests.integration import (
    call_api,
    configure,
    metrics_from,
    poll,
    receive_all,
    send_bodies,
    visibility_calls,
)
from tests.support import LambdaContext, api_event, load_function, sqs_event, sqs_records_from

NAMESPACE = uuid.UUID("8b0c1f0e-6c4f-4a53-9d53-6f8f2b0c1e01")


def identify(user: str, **extra: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, **extra}


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


class RefusingSQS:
    """The layer's SQS client, except that SendMessageBatch refuses the entries whose body holds `marker`
    (`times` times each; None: always), as SQS does when throttled or failing internally."""

    def __init__(self, real: Any, marker: str, times: int | None) -> None:
        self._real = real
        self._marker = marker
        self._left = times
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        refuse = self._left is None or self._left > 0
        keep = [e for e in Entries if not (refuse and self._marker in e["MessageBody"])]
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in Entries
            if e not in keep
        ]
        if failed and self._left is not None:
            self._left -= 1
        self.refused += len(failed)
        answer = self._real.send_message_batch(QueueUrl=QueueUrl, Entries=keep) if keep else {}
        return {"Successful": answer.get("Successful", []), "Failed": failed}


# ---- 1. partial enqueue on the API ------------------------------------------------------------


def peek_all(stack: Stack, queue_url: str) -> list[dict[str, Any]]:
    """Every visible message, made visible again at once."""
    messages = receive_all(stack, queue_url)
    for message in messages:
        stack.sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return messages


def batch_of(n: int, **extra: Any) -> dict[str, Any]:
    return {"batch": [{"type": "track", "userId": f"u{i}", "event": "viewed", **extra} for i in range(n)]}


def test_entries_sqs_refused_once_are_sent_again_within_the_request(
    stack: Stack, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN SendMessageBatch refuses the entry of user u7 the first time
    refusing = RefusingSQS(clients.sqs(), '"u7"', times=1)
    monkeypatch.setattr(queues, "sqs_client", lambda: refusing)

    # WHEN a batch of 15 calls is posted
    answer = call_api(api_event("POST", "/v1/batch", batch_of(15)), lambda_context)

    # THEN the refused entry was sent again in the same request: 200, each call queued once
    assert refusing.refused == 1
    assert answer.status == 200, answer.body
    queued = [json.loads(m["Body"]) for m in receive_all(stack, stack.events_queue_url)]
    assert sorted(c["messageId"] for c in queued) == sorted(answer.body["call_ids"])
    assert len(queued) == 15


def test_entries_sqs_keeps_refusing_are_named_in_the_503_and_a_retry_of_those_delivers_each_once(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN SendMessageBatch refuses the entry of user u7 every time
    refusing = RefusingSQS(clients.sqs(), '"u7"', times=None)
    monkeypatch.setattr(queues, "sqs_client", lambda: refusing)
    body = batch_of(15)

    # WHEN a batch of 15 calls (no messageIds of their own) is posted
    answer = call_api(api_event("POST", "/v1/batch", body), lambda_context)

    # THEN 503 says which 14 calls were queued and which position was not
    assert answer.status == 503
    assert answer.body["code"] == "enqueue_failed"
    assert answer.body["not_queued"] == [7]
    assert len(answer.body["queued_call_ids"]) == 14
    on_queue = [json.loads(m["Body"]) for m in peek_all(stack, stack.events_queue_url)]
    assert sorted(c["messageId"] for c in on_queue) == sorted(answer.body["queued_call_ids"])

    # WHEN SQS recovers and the caller sends again only what was not queued, then the queue is drained
    monkeypatch.setattr(queues, "sqs_client", clients.sqs)
    retry = {"batch": [body["batch"][i] for i in answer.body["not_queued"]]}
    assert call_api(api_event("POST", "/v1/batch", retry), lambda_context).status == 200
    while poll(stack, lambda_context).records:
        pass

    # THEN Customer.io got each of the 15 calls exactly once
    users = sorted(c["userId"] for c in fake_cio.pipelines_calls())
    assert users == sorted(f"u{i}" for i in range(15))


def test_positions_not_queued_are_the_callers_own_when_some_calls_were_refused(
    stack: Stack, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch whose first call is invalid (refused, the others queued) and SQS refusing u7's entry
    body = batch_of(15)
    body["batch"][0] = {"type": "track", "event": "viewed"}  # no userId
    refusing = RefusingSQS(clients.sqs(), '"u7"', times=None)
    monkeypatch.setattr(queues, "sqs_client", lambda: refusing)

    # WHEN it is posted
    answer = call_api(api_event("POST", "/v1/batch", body), lambda_context)

    # THEN the 503 names u7 by its index in the caller's batch, and 13 calls as queued
    assert answer.status == 503
    assert answer.body["not_queued"] == [7]
    assert len(answer.body["queued_call_ids"]) == 13


def test_a_caller_that_sets_message_ids_may_retry_the_whole_request(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch whose calls carry their own messageIds, and SQS refusing one entry for good
    body = {"batch": [{**c, "messageId": f"m-{i}"} for i, c in enumerate(batch_of(15)["batch"])]}
    refusing = RefusingSQS(clients.sqs(), '"u7"', times=None)
    monkeypatch.setattr(queues, "sqs_client", lambda: refusing)
    assert call_api(api_event("POST", "/v1/batch", body), lambda_context).status == 503

    # WHEN SQS recovers and the caller retries the whole request
    monkeypatch.setattr(queues, "sqs_client", clients.sqs)
    assert call_api(api_event("POST", "/v1/batch", body), lambda_context).status == 200
    while poll(stack, lambda_context).records:
        pass

    # THEN every call reached Customer.io under its own messageId, and only under it
    calls = fake_cio.pipelines_calls()
    assert {c["messageId"] for c in calls} == {f"m-{i}" for i in range(15)}
    assert all(c["userId"] == f"u{c['messageId'][2:]}" for c in calls)


# ---- 3. the derived messageId survives the dead-letter copy and its redrive ------------------


def test_derived_message_id_survives_dead_letter_and_redrive(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer's call without messageId, refused once by Customer.io (so it is dead-lettered)
    [sqs_id] = send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=400))
    assert poll(stack, lambda_context).failed_ids == []
    [first] = [r.json["batch"][0]["messageId"] for r in fake_cio.requests_to("/v1/batch")]
    assert first == str(uuid.uuid5(NAMESPACE, f"{sqs_id}/0"))

    # WHEN the operator redrives the DLQ (a new SQS message) and it is delivered
    moved, failed = cli_dlq.move_messages(stack.sqs, stack.events_dlq_url, stack.events_queue_url)
    assert (moved, failed) == (1, 0)
    result = poll(stack, lambda_context)

    # THEN it is a new SQS message, but Customer.io got the call under the same messageId again
    assert result.records[0]["messageId"] != sqs_id
    assert result.failed_ids == []
    assert [r.json["batch"][0]["messageId"] for r in fake_cio.requests_to("/v1/batch")] == [first, first]


def test_derived_message_id_survives_a_move_task_redrive(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a dead-lettered call without messageId
    [sqs_id] = send_bodies(stack, stack.events_queue_url, [identify("u1")])
    fake_cio.fail("/v1/batch", Fault(status=400))
    poll(stack, lambda_context)
    [dead] = receive_all(stack, stack.events_dlq_url)

    # WHEN SQS's move task puts it back (a new message with the same body and attributes)
    stack.sqs.send_message(
        QueueUrl=stack.events_queue_url, MessageBody=dead["Body"], MessageAttributes=dead["MessageAttributes"]
    )
    poll(stack, lambda_context)

    # THEN the call went out under the messageId derived from the first message
    sent = [r.json["batch"][0]["messageId"] for r in fake_cio.requests_to("/v1/batch")]
    assert sent == [str(uuid.uuid5(NAMESPACE, f"{sqs_id}/0"))] * 2


# ---- 4. a Retry-After of a day ------------------------------------------------------------------


class TwelveHourSQS:
    """ChangeMessageVisibilityBatch as SQS does it: refused past 12 h from the receive, which happened
    `received_ago` seconds before the invocation started."""

    def __init__(self, received_ago: int) -> None:
        self.limit = 43_200 - received_ago
        self.asked: list[int] = []

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        failed = []
        for entry in Entries:
            self.asked.append(entry["VisibilityTimeout"])
            if entry["VisibilityTimeout"] > self.limit:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": "InvalidParameterValue"})
        ok = [{"Id": e["Id"]} for e in Entries if e["Id"] not in {f["Id"] for f in failed}]
        return {"Successful": ok, "Failed": failed}


@pytest.mark.parametrize(("received_ago", "asked"), [(5, 1), (400, 2)], ids=["at-once", "after-a-window"])
def test_retry_after_of_a_day_asks_what_sqs_allows(received_ago: int, asked: int) -> None:
    # GIVEN Customer.io answers 429 with Retry-After: 86400 and the record was received some time ago
    sqs = TwelveHourSQS(received_ago)
    event = sqs_event([json.dumps(identify("u1"))], queue_arn="arn:aws:sqs:us-east-1:123456789012:q")

    def deliver(records: Any, deadline: Any) -> dict[str, BaseException | None]:
        return {r.message_id: RateLimited("429", status=429, retry_after=86_400) for r in records}

    # WHEN the batch is settled (function timeout 30 s)
    with pytest.raises(BatchProcessingError):
        process_batch(
            event,
            cast(Any, LambdaContext(remaining_ms=30_000)),
            deliver=deliver,
            settings=load_settings({}),
            queues=queues.Queues(sqs),  # type: ignore[arg-type]
            queue_url=None,
            dlq_url=None,
        )

    # THEN it asked for at most 12 h less the function's timeout, and for less when SQS refused that
    assert sqs.asked[0] <= 43_200 - 30
    assert sqs.asked[0] >= 43_200 - 30 - 2
    assert len(sqs.asked) == asked
    assert sqs.asked[-1] <= sqs.limit
    assert sqs.asked[-1] >= 43_200 // 4  # still hours, not the 3 minutes of the queue's own timeout


# ---- 5. healthy records on their last receive ------------------------------------------------


def receive_times(stack: Stack, n: int) -> None:
    for _ in range(n):
        assert stack.receive(stack.events_queue_url, visibility=0)


def test_record_not_attempted_on_its_last_receive_is_re_enqueued_with_its_lineage(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN maxReceiveCount 5 and a record received four times already
    configure(monkeypatch, MAX_RECEIVE_COUNT="5")
    [sqs_id] = send_bodies(stack, stack.events_queue_url, [identify("u1")])
    receive_times(stack, 4)

    # WHEN its fifth receive comes with too little time left to send anything
    result = poll(stack, LambdaContext(remaining_ms=1_000))

    # THEN it is acknowledged, not dead-lettered: a fresh copy waits on the queue with its lineage
    assert result.response == {"batchItemFailures": []}
    assert receive_all(stack, stack.events_dlq_url) == []
    [copy] = peek_all(stack, stack.events_queue_url)
    assert copy["MessageId"] != sqs_id
    assert attributes(copy) == {"SourceMessageId": sqs_id, "LineageReceiveCount": "5", "RequeueCount": "1"}
    assert metrics_from(capsys.readouterr().out)["Requeued"] == 1

    # AND when the copy is delivered, Customer.io gets the messageId derived from the first message
    assert poll(stack, LambdaContext()).failed_ids == []
    [call] = fake_cio.pipelines_calls()
    assert call["messageId"] == str(uuid.uuid5(NAMESPACE, f"{sqs_id}/0"))


def test_re_enqueueing_is_bounded(
    stack: Stack, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a copy that was already re-enqueued the most times allowed, on its last receive
    configure(monkeypatch, MAX_RECEIVE_COUNT="5")
    lineage = {
        "SourceMessageId": "first-message",
        "LineageReceiveCount": str(5 * MAX_REQUEUES + 5),
        "RequeueCount": str(MAX_REQUEUES),
    }
    stack.sqs.send_message(
        QueueUrl=stack.events_queue_url,
        MessageBody=json.dumps(identify("u1")),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in lineage.items()},
    )
    receive_times(stack, 4)

    # WHEN it is again not attempted
    poll(stack, LambdaContext(remaining_ms=1_000))

    # THEN it goes to the DLQ with the reason, naming every receive of its line
    [dead] = receive_all(stack, stack.events_dlq_url)
    reason = attributes(dead)
    assert reason["SourceMessageId"] == "first-message"
    assert f"in {5 * MAX_REQUEUES + 10} receives and {MAX_REQUEUES} re-enqueues" in reason["FailureReason"]
    assert receive_all(stack, stack.events_queue_url) == []


def test_record_failing_on_its_last_receive_is_still_dead_lettered_with_the_reason(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN maxReceiveCount 5, a record on its fifth receive, and Customer.io down
    configure(monkeypatch, MAX_RECEIVE_COUNT="5")
    send_bodies(stack, stack.events_queue_url, [identify("u1")])
    receive_times(stack, 4)
    fake_cio.outage(True)

    # WHEN it fails once more
    poll(stack, lambda_context)

    # THEN it was attempted, so it is dead-lettered (not re-enqueued) with its reason
    [dead] = receive_all(stack, stack.events_dlq_url)
    assert attributes(dead)["FailureReason"].startswith("gave up after 5 receives")
    assert receive_all(stack, stack.events_queue_url) == []


# ---- 6. a dead-letter copy that fails --------------------------------------------------------


def test_failed_dead_letter_copy_backs_off_and_is_counted(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the DLQ cannot be written (its URL names no queue) and a poison record
    configure(monkeypatch, EVENTS_DLQ_URL=stack.events_dlq_url.rsplit("/", 1)[0] + "/no-such-dlq")
    send_bodies(stack, stack.events_queue_url, ["{not json"])

    # WHEN it is handled
    with visibility_calls() as visibility:
        result = poll(stack, lambda_context)

    # THEN it is reported with a real backoff (at least the 30 s base), not sent back at once
    assert len(result.failed_ids) == 1
    [seconds] = visibility.timeouts
    assert 30 <= seconds <= 43_200
    assert stack.depth(stack.events_queue_url) == {"visible": 0, "in_flight": 1}
    assert metrics_from(capsys.readouterr().out)["DeadLetterFailed"] == 1


# ---- 10. the dead-letter copy keeps what delivery needs ---------------------------------------


def test_dead_letter_copy_keeps_idempotency_key_and_channel_among_ten_attributes(stack: Stack) -> None:
    # GIVEN an email message with SQS's maximum of 10 attributes, IdempotencyKey and Channel last
    own = {f"Custom{i}": {"DataType": "String", "StringValue": f"v{i}"} for i in range(8)}
    own["Channel"] = {"DataType": "String", "StringValue": "email"}
    own["IdempotencyKey"] = {"DataType": "String", "StringValue": "order-42"}
    stack.sqs.send_message(QueueUrl=stack.email_queue_url, MessageBody="{not json", MessageAttributes=own)
    messages = stack.receive(stack.email_queue_url)

    # WHEN the email function dead-letters it
    load_function("email").lambda_handler(sqs_records_from(messages, stack.email_queue_arn), LambdaContext())

    # THEN the copy has 10 attributes: what delivery needs, the reason, and as many others as fit
    [dead] = receive_all(stack, stack.email_dlq_url)
    kept = attributes(dead)
    assert len(kept) == 10
    assert (kept["IdempotencyKey"], kept["Channel"]) == ("order-42", "email")
    assert {"SourceMessageId", "FailureReason", "FailureStatus", "ReceiveCount"} <= set(kept)


# ---- 9. AWS endpoints that hang -----------------------------------------------------------------


class HungEndpoint:
    """A TCP listener on 127.0.0.1 that accepts connections, reads, and never answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.connections = 0
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._open.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._open:
            conn.close()
        self._server.close()


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungEndpoint]:
    endpoint = HungEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    # The same client settings, with timeouts short enough for a test to wait them out.
    monkeypatch.setattr(clients, "CONNECT_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(clients, "READ_TIMEOUT_SECONDS", 0.2)
    reset_caches()
    yield endpoint
    endpoint.close()
    reset_caches()


def test_every_aws_client_has_short_timeouts_and_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the function timeout the template sets (30 s)
    # WHEN each client the functions use is built
    for client in (clients.sqs(), clients.secretsmanager(), clients.dynamodb()):
        config: Any = client.meta.config
        # THEN it has explicit timeouts and at most 3 attempts, so one call gives up within the timeout
        assert (config.connect_timeout, config.read_timeout) == (2.0, 5.0)
        assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    assert clients.WORST_CASE_CALL_SECONDS < 30
    assert clients.secrets_provider().client is clients.secretsmanager()


def test_hung_secrets_manager_fails_the_cold_start_in_time(hung: HungEndpoint) -> None:
    # GIVEN Secrets Manager accepts connections and never answers
    settings = load_settings({"CUSTOMERIO_SECRET_ID": "cio-relay/customerio"})

    # WHEN a cold start reads the credentials
    with pytest.raises(ConfigurationError, match="cannot read secret"):
        CredentialsProvider(settings).get()

    # THEN it gave up after its bounded attempts (each cut short by the read timeout)
    assert hung.connections == clients.MAX_ATTEMPTS


def test_hung_sqs_answers_503_in_time(
    hung: HungEndpoint, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN SQS accepts connections and never answers
    configure(monkeypatch, EVENTS_QUEUE_URL=f"{hung.url}/123456789012/events")

    # WHEN a call is posted
    answer = call_api(api_event("POST", "/v1/identify", {"userId": "u1"}), lambda_context)

    # THEN the caller gets 503 after the bounded attempts, not a function timeout
    assert (answer.status, answer.body["code"]) == (503, "enqueue_failed")
    assert hung.connections == clients.MAX_ATTEMPTS


def test_hung_sqs_during_failure_handling_still_reports_the_records(
    hung: HungEndpoint, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN SQS hangs and every record of a batch was not attempted
    configure(monkeypatch, EVENTS_QUEUE_URL=f"{hung.url}/123456789012/q")
    event = sqs_event(
        [json.dumps(identify(f"u{i}")) for i in range(3)], queue_arn="arn:aws:sqs:us-east-1:1:q"
    )

    def deliver(records: Any, deadline: Any) -> dict[str, BaseException | None]:
        return {r.message_id: NotAttempted("no time") for r in records}

    # WHEN the batch is settled
    with pytest.raises(BatchProcessingError) as raised:
        process_batch(
            event,
            cast(Any, LambdaContext()),
            deliver=deliver,
            settings=load_settings({}),
            queues=queues.Queues(),
            queue_url=None,
            dlq_url=None,
        )

    # THEN the visibility change gave up after its bounded attempts and every record is reported
    assert hung.connections == clients.MAX_ATTEMPTS
    assert len(raised.value.child_exceptions) == 3
