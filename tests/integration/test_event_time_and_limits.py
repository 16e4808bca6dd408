"""Event time kept from the accept (or SQS send), and Customer.io Journeys' limits refused at the edge."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import Stack
from tests.integration import bodies, call_api, captured_logs, poll, receive_all, send_bodies
from tests.integration import configure as set_parameters
from tests.support import LambdaContext, api_event

Configure = Callable[..., None]


@pytest.fixture
def configure(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Configure:
    return functools.partial(set_parameters, monkeypatch)


def parse(timestamp: str) -> datetime:
    assert timestamp.endswith("Z"), timestamp  # UTC, as ISO-8601
    return datetime.fromisoformat(timestamp)


# ---- event time ------------------------------------------------------------------------------


def test_call_without_timestamp_is_queued_with_the_accept_time(
    stack: Stack, lambda_context: LambdaContext
) -> None:
    # GIVEN a track call without a timestamp
    before = datetime.now(UTC)

    # WHEN the API accepts it
    answer = call_api(api_event("POST", "/v1/track", {"userId": "u1", "event": "paid"}), lambda_context)
    after = datetime.now(UTC)

    # THEN the queued call carries the accept time, in ISO-8601 UTC
    assert answer.status == 200
    [body] = bodies(receive_all(stack, stack.events_queue_url))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parse(body["timestamp"]) <= after


def test_callers_timestamp_is_never_changed(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a batch whose first call has its own timestamp and whose second has none
    calls = [
        {"type": "track", "userId": "u1", "event": "paid", "timestamp": "2024-02-29T12:00:00+01:00"},
        {"type": "identify", "userId": "u1"},
    ]

    # WHEN it is accepted
    answer = call_api(api_event("POST", "/v1/batch", {"batch": calls}), lambda_context)

    # THEN the first keeps its timestamp exactly, the second got the accept time
    assert answer.status == 200
    by_type = {b["type"]: b for b in bodies(receive_all(stack, stack.events_queue_url))}
    assert by_type["track"]["timestamp"] == "2024-02-29T12:00:00+01:00"
    parse(by_type["identify"]["timestamp"])


def test_queue_message_without_timestamp_gets_its_sent_time_on_every_retry(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN a producer's message without a timestamp, and Customer.io failing the first delivery
    configure(RETRY_BASE_SECONDS="0", RETRY_CAP_SECONDS="0")
    send_bodies(stack, stack.events_queue_url, [{"type": "track", "userId": "u1", "event": "paid"}])
    fake_cio.fail("/v1/batch", Fault(status=503))

    # WHEN it is delivered, retried, and delivered again
    first = poll(stack, lambda_context)
    second = poll(stack, lambda_context)

    # THEN both requests carried the message's SQS SentTimestamp as the event time
    sent_ms = int(first.records[0]["attributes"]["SentTimestamp"])
    stamps = [r.json["batch"][0]["timestamp"] for r in fake_cio.requests_to("/v1/batch")]
    assert len(stamps) == 2
    assert stamps[0] == stamps[1]
    assert int(parse(stamps[0]).timestamp() * 1000) == sent_ms
    assert second.failed_ids == []


def test_queue_message_with_timestamp_keeps_it(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer's message with its own timestamp
    call = {"type": "identify", "userId": "u1", "timestamp": "2025-01-01T00:00:00Z"}
    send_bodies(stack, stack.events_queue_url, [call])

    # WHEN it is delivered / THEN Customer.io receives that timestamp
    poll(stack, lambda_context)
    [sent] = fake_cio.pipelines_calls()
    assert sent["timestamp"] == "2025-01-01T00:00:00Z"


def test_timestamp_that_is_not_a_date_is_refused_naming_it(
    stack: Stack, lambda_context: LambdaContext
) -> None:
    # GIVEN a call whose timestamp is not ISO-8601 / WHEN it is posted
    answer = call_api(
        api_event("POST", "/v1/track", {"userId": "u1", "event": "paid", "timestamp": "yesterday"}),
        lambda_context,
    )

    # THEN it is refused with the field named, and nothing is queued
    assert answer.status == 400  # validation errors on the Pipelines routes are 400, as in strict mode
    assert answer.body["field"] == "timestamp"
    assert "ISO-8601" in answer.body["message"]
    assert receive_all(stack, stack.events_queue_url) == []


# ---- Journeys' limits ----------------------------------------------------------------------------


LIMITED = [
    pytest.param("/v1/identify", {"userId": "u" * 151}, "userId", "150", id="identifier-151-bytes"),
    pytest.param("/v1/identify", {"userId": "é" * 76}, "userId", "150", id="identifier-152-utf8-bytes"),
    pytest.param(
        "/v1/track", {"userId": "u1", "event": "e" * 101}, "event", "100", id="event-name-101-bytes"
    ),
    pytest.param(
        "/v1/identify", {"userId": "u1", "traits": {"bio": "x" * 1001}}, "traits.bio", "1000", id="value-1001"
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "u1", "traits": {"tags": ["x" * 600, "y" * 600]}},
        "traits.tags",
        "1000",
        id="list-value-over-1000",
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "u1", "traits": {f"a{i}": i for i in range(301)}},
        "traits",
        "300",
        id="301-attributes",
    ),
    pytest.param(
        "/v1/identify", {"userId": "u1", "traits": {"k" * 151: 1}}, "traits." + "k" * 40, "150", id="name-151"
    ),
    pytest.param("/v1/group", {"userId": "u1", "groupId": "g" * 151}, "groupId", "150", id="object-id-151"),
    pytest.param(
        "/v1/alias", {"userId": "u1", "previousId": "p" * 151}, "previousId", "150", id="previous-id"
    ),
]


@pytest.mark.parametrize(("path", "call", "field", "limit"), LIMITED)
def test_call_over_a_journeys_limit_is_refused_with_the_field_and_the_limit(
    stack: Stack, lambda_context: LambdaContext, path: str, call: dict[str, Any], field: str, limit: str
) -> None:
    # GIVEN a call that Customer.io would accept with 200 and then drop / WHEN it is posted
    answer = call_api(api_event("POST", path, call), lambda_context)

    # THEN it is refused with 400 naming the field and the limit; nothing is queued
    assert answer.status == 400
    assert answer.body["field"] == field
    assert f"at most {limit}" in answer.body["message"]
    assert receive_all(stack, stack.events_queue_url) == []


def test_calls_at_the_limits_are_accepted(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a call exactly at every limit
    traits: dict[str, Any] = {f"a{i}": "v" for i in range(299)}
    traits["bio"] = "x" * 1000
    call = {"type": "identify", "userId": "u" * 150, "traits": traits}
    event = {"type": "track", "userId": "u" * 150, "event": "e" * 100}

    # WHEN they are posted / THEN both are queued
    answer = call_api(api_event("POST", "/v1/batch", {"batch": [call, event]}), lambda_context)
    assert answer.status == 200
    assert len(receive_all(stack, stack.events_queue_url)) == 2


def test_batch_call_over_a_limit_names_its_index(stack: Stack, lambda_context: LambdaContext) -> None:
    calls = [{"type": "identify", "userId": "u1"}, {"type": "track", "userId": "u1", "event": "e" * 101}]
    answer = call_api(api_event("POST", "/v1/batch", {"batch": calls}), lambda_context)
    assert answer.status == 400
    assert answer.body["field"] == "batch.1.event"


def test_delete_with_an_id_over_the_limit_is_refused(stack: Stack, lambda_context: LambdaContext) -> None:
    long_id = "u" * 151
    event = api_event(
        "DELETE", f"/v1/customers/{long_id}", resource="/v1/customers/{id}", path_parameters={"id": long_id}
    )
    answer = call_api(event, lambda_context)
    assert answer.status == 400
    assert answer.body["field"] == "userId"


def test_queue_message_over_a_limit_is_dead_lettered_with_the_reason(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a producer's message whose event name is over 100 bytes, and a good one
    send_bodies(
        stack,
        stack.events_queue_url,
        [{"type": "track", "userId": "u1", "event": "e" * 101}, {"type": "identify", "userId": "u2"}],
    )

    # WHEN they are handled
    result = poll(stack, lambda_context)

    # THEN the good one is delivered, the other dead-lettered with the field and the limit
    assert [c["userId"] for c in fake_cio.pipelines_calls()] == ["u2"]
    assert result.failed_ids == []
    [dead] = receive_all(stack, stack.events_dlq_url)
    reason = dead["MessageAttributes"]["FailureReason"]["StringValue"]
    assert reason.startswith("event: event name is 101 bytes; Customer.io takes at most 100")


@pytest.mark.parametrize("policy", ["warn", "off"])
def test_limits_policy_warn_or_off_lets_the_call_through(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure, policy: str
) -> None:
    # GIVEN JOURNEYS_LIMITS_POLICY=warn (or off)
    configure(JOURNEYS_LIMITS_POLICY=policy)

    # WHEN a call over a limit is posted and delivered
    with captured_logs() as logs:
        answer = call_api(api_event("POST", "/v1/identify", {"userId": "u" * 151}), lambda_context)
        poll(stack, lambda_context)

    # THEN it is queued and delivered; `warn` logs the field (never the value), `off` says nothing
    assert answer.status == 200
    sent = [c for r in fake_cio.requests_to("/v1/batch") for c in r.json["batch"]]
    assert [len(c["userId"]) for c in sent] == [151]  # sent (Customer.io then drops it)
    warnings = [line for line in logs.lines if line["message"] == "call exceeds a Customer.io limit"]
    assert [w["field"] for w in warnings] == (["userId", "userId"] if policy == "warn" else [])
    assert "u" * 151 not in json.dumps(logs.lines)
