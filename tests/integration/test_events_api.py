"""EventsFunction behind API Gateway: every route through the real handler, moto queues, fake Customer.io."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, PIPELINES_KEY, Stack
from tests.integration import (
    bodies,
    call_api,
    captured_logs,
    configure,
    events_handler,
    metrics_from,
    receive_all,
)
from tests.support import LambdaContext, api_event

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("identify", {"userId": "user-1", "traits": {"plan": "pro"}}),
    ("track", {"userId": "user-1", "event": "order_completed", "properties": {"total": 42.5}}),
    ("page", {"anonymousId": "anon-1", "name": "pricing"}),
    ("screen", {"userId": "user-1", "name": "checkout"}),
    ("group", {"groupId": "acct-42", "traits": {"name": "Example Ltd"}}),
    ("alias", {"previousId": "anon-1", "userId": "user-1"}),
]


def queued(stack: Stack) -> list[dict[str, Any]]:
    return receive_all(stack, stack.events_queue_url)


# ---- the Pipelines routes queue calls --------------------------------------------------------


@pytest.mark.parametrize(
    ("call_type", "call", "base64_body"),
    [(t, c, i % 2 == 1) for i, (t, c) in enumerate(CALLS)],  # API Gateway sends both encodings
    ids=[f"{t}-{'base64' if i % 2 else 'plain'}" for i, (t, _) in enumerate(CALLS)],
)
def test_call_is_queued_with_its_type_and_a_message_id(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    call_type: str,
    call: dict[str, Any],
    base64_body: bool,
) -> None:
    # GIVEN a Pipelines call as an SDK would post it
    event = api_event("POST", f"/v1/{call_type}", call, base64_body=base64_body)

    # WHEN API Gateway hands it to the function
    answer = call_api(event, lambda_context)

    # THEN it answers 200 with the SQS message id and the call's messageId
    assert answer.status == 200
    assert answer.body["status"] == "queued"
    [message_id] = answer.body["message_ids"]
    [call_id] = answer.body["call_ids"]
    # AND EventsQueue holds exactly that call, in Customer.io's shape, with its type
    [message] = queued(stack)
    assert message["MessageId"] == message_id
    body = json.loads(message["Body"])
    assert body.pop("timestamp").endswith("Z")  # stamped with the accept time (test_event_time.py)
    assert body == {**call, "type": call_type, "messageId": call_id}
    # AND Customer.io is not called on the request path
    assert fake_cio.requests == []


def test_call_keeps_the_callers_message_id(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a call that already carries a messageId (SDKs set one)
    call = {"userId": "user-1", "event": "signed_up", "messageId": "sdk-msg-1"}

    # WHEN it is posted
    answer = call_api(api_event("POST", "/v1/track", call), lambda_context)

    # THEN that messageId is kept, in the answer and on the queue
    assert answer.body["call_ids"] == ["sdk-msg-1"]
    assert bodies(queued(stack))[0]["messageId"] == "sdk-msg-1"


def test_batch_queues_one_message_per_call_in_order(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a /v1/batch body of 23 calls (more than one SendMessageBatch) with a shared context
    calls = [{"type": "track", "userId": f"user-{i}", "event": "item_viewed"} for i in range(23)]
    event = api_event("POST", "/v1/batch", {"batch": calls, "context": {"app": {"name": "shop"}}})

    # WHEN it is posted
    answer = call_api(event, lambda_context)

    # THEN each call is one message, answered in the order sent
    assert answer.status == 200
    assert len(answer.body["message_ids"]) == len(answer.body["call_ids"]) == 23
    by_id = {m["MessageId"]: json.loads(m["Body"]) for m in queued(stack)}
    assert set(by_id) == set(answer.body["message_ids"])
    in_order = [by_id[mid] for mid in answer.body["message_ids"]]
    assert [b["userId"] for b in in_order] == [f"user-{i}" for i in range(23)]
    assert [b["messageId"] for b in in_order] == answer.body["call_ids"]
    # AND the batch-level context is folded into every call
    assert all(b["context"] == {"app": {"name": "shop"}} for b in in_order)


@pytest.mark.parametrize(
    ("raw_id", "user_id"),
    [("user-1", "user-1"), ("ada%40example.com", "ada@example.com"), ("team%2Fada%2Bx", "team/ada+x")],
)
def test_delete_customer_queues_a_user_deleted_call(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, raw_id: str, user_id: str
) -> None:
    # GIVEN a DELETE whose id is URL-encoded in the path, as API Gateway REST passes it
    event = api_event(
        "DELETE",
        f"/v1/customers/{raw_id}",
        resource="/v1/customers/{id}",
        path_parameters={"id": user_id},
    )

    # WHEN it is handled
    answer = call_api(event, lambda_context)

    # THEN the `User Deleted` semantic event for the decoded id is queued (Customer.io has no person DELETE)
    assert answer.status == 200
    [body] = bodies(queued(stack))
    assert body.pop("timestamp").endswith("Z")
    assert body == {
        "type": "track",
        "event": "User Deleted",
        "userId": user_id,
        "messageId": answer.body["call_ids"][0],
    }
    assert fake_cio.requests == []


def test_api_event_never_reaches_the_batch_processor(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN an API Gateway event that happens to carry a `Records` key
    event = api_event("POST", "/v1/identify", {"userId": "user-1"})
    event["Records"] = [{"eventSource": "aws:s3"}]

    # WHEN the handler routes it
    result = events_handler()(event, lambda_context)

    # THEN the resolver answered (not a batch response), and the call is queued
    assert "batchItemFailures" not in result
    assert result["statusCode"] == 200
    assert len(queued(stack)) == 1


# ---- pass-through to the App API -------------------------------------------------------------


def test_search_people_returns_customerio_answer_as_is(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a people search with paging parameters: a cursor Customer.io handed out after the first person
    search = {"filter": {"and": [{"attribute": {"field": "plan", "operator": "eq", "value": "pro"}}]}}
    cursor = fake_cio.workspace.search(search["filter"], "", 1)["next"]
    event = api_event("POST", "/v1/customers", search, query={"start": cursor, "limit": "2"})

    # WHEN it is handled
    answer = call_api(event, lambda_context)

    # THEN Customer.io's page comes back unchanged
    assert answer.status == 200
    assert answer.body == {
        "identifiers": [
            {"email": "grace@example.com", "id": "user-2", "cio_id": "a1b2c3d4e5f60002"},
            {"email": "alan@example.com", "id": "user-3", "cio_id": "a1b2c3d4e5f60003"},
        ],
        "ids": ["user-2", "user-3"],
        "next": "",
    }
    # AND the App API got the filter, the paging and the relay's Bearer key; nothing was queued
    [request] = fake_cio.requests
    assert (request.method, request.path, request.query) == (
        "POST",
        "/v1/customers",
        {"start": cursor, "limit": "2"},
    )
    assert request.json == search
    assert request.headers["authorization"] == f"Bearer {APP_KEY}"
    assert queued(stack) == []


def test_list_segments_returns_customerio_answer_as_is(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the App API knows two segments
    # WHEN GET /v1/segments is handled
    answer = call_api(api_event("GET", "/v1/segments"), lambda_context)

    # THEN they come back as Customer.io sent them
    assert answer.status == 200
    assert answer.body == {"segments": fake_cio.segments}
    assert fake_cio.requests[0].headers["authorization"] == f"Bearer {APP_KEY}"


UPSTREAM_FAILURES = [
    pytest.param(
        "search", [Fault(status=429, retry_after="7")], 429, "customerio_rate_limited", "7", id="429"
    ),
    pytest.param("segments", [Fault(status=429)], 429, "customerio_rate_limited", "1", id="429-no-header"),
    pytest.param("search", [Fault(status=500)], 502, "customerio_unavailable", None, id="500"),
    pytest.param("segments", [Fault(status=503)], 502, "customerio_unavailable", None, id="503"),
    pytest.param("search", [Fault(drop=True)] * 2, 502, "customerio_unavailable", None, id="dropped"),
    pytest.param("segments", [Fault(delay=1)], 504, "customerio_timeout", None, id="timeout-segments"),
    pytest.param("search", [Fault(delay=1)], 504, "customerio_timeout", None, id="timeout-search"),
]


@pytest.mark.parametrize(("route", "faults", "status", "code", "retry_after"), UPSTREAM_FAILURES)
def test_passthrough_maps_customerio_failures(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    faults: list[Fault],
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    # GIVEN Customer.io fails the way this case says (a read timeout of 0.5 s keeps the test short)
    configure(monkeypatch, CUSTOMERIO_READ_TIMEOUT="0.5")
    path = "/v1/customers" if route == "search" else "/v1/segments"
    fake_cio.fail(path, *faults)
    event = api_event("POST", path, {"filter": {"and": []}}) if route == "search" else api_event("GET", path)

    # WHEN the pass-through route is called
    answer = call_api(event, lambda_context)

    # THEN the caller gets the mapped status with a JSON {code, message}
    assert answer.status == status
    assert answer.body["code"] == code
    assert answer.body["message"]
    assert answer.headers.get("Retry-After") == retry_after


def test_passthrough_auth_rejected_is_502_without_echoing_credentials(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io refuses the App API key, before and after the secret is re-read
    fake_cio.app_api_key = "rotated-key-the-secret-does-not-have"

    # WHEN a search is made
    with captured_logs() as logs:
        answer = call_api(api_event("POST", "/v1/customers", {"filter": {"and": []}}), lambda_context)

    # THEN 502 says the relay's credentials were refused, and never shows them
    assert answer.status == 502
    assert answer.body["code"] == "customerio_auth_rejected"
    assert "credentials" in answer.body["message"]
    assert APP_KEY not in json.dumps(answer.body)
    assert APP_KEY not in logs.text()
    # AND the secret was re-read and the request tried once more before giving up
    assert [r.status for r in fake_cio.requests] == [401, 401]


def test_passthrough_recovers_when_the_rotated_secret_is_re_read(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN the function has cached the App API key, then the key is rotated in the secret and Customer.io
    assert call_api(api_event("GET", "/v1/segments"), lambda_context).status == 200
    stack_secret = {"pipelines_api_key": PIPELINES_KEY, "app_api_key": "app-key-2"}
    boto3.client("secretsmanager").put_secret_value(
        SecretId=stack.secret_arn, SecretString=json.dumps(stack_secret)
    )
    fake_cio.app_api_key = "app-key-2"

    # WHEN the next request is made
    answer = call_api(api_event("GET", "/v1/segments"), lambda_context)

    # THEN the 401 made the relay re-read the secret and retry at once
    assert answer.status == 200
    assert [(r.status, r.headers["authorization"]) for r in fake_cio.requests[1:]] == [
        (401, f"Bearer {APP_KEY}"),
        (200, "Bearer app-key-2"),
    ]


def test_passthrough_400_keeps_customerio_message(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN Customer.io rejects the search filter
    fake_cio.fail("/v1/customers", Fault(status=400, body={"meta": {"error": "filter: unknown operator"}}))

    # WHEN the search is made
    answer = call_api(api_event("POST", "/v1/customers", {"filter": {"x": 1}}), lambda_context)

    # THEN the caller gets 400 with Customer.io's own message
    assert answer.status == 400
    assert "filter: unknown operator" in answer.body["message"]


# ---- bad input -------------------------------------------------------------------------------


def big(n: int) -> str:
    return "x" * n


BAD_INPUT = [
    pytest.param(
        api_event("POST", "/v1/identify", raw_body="{not json"),
        415,
        "unsupported_media_type",
        None,
        id="invalid-json",
    ),
    pytest.param(
        api_event("POST", "/v1/track", raw_body="hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
        None,
        id="text-plain",
    ),
    pytest.param(
        api_event(
            "POST",
            "/v1/identify",
            raw_body='{"userId": "u1"}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported_media_type",
        None,
        id="form-encoded",
    ),
    pytest.param(
        api_event("POST", "/v1/identify", {"traits": {}}), 400, "validation_error", "userId", id="no-id"
    ),
    pytest.param(api_event("POST", "/v1/identify"), 400, "validation_error", "body", id="no-body"),
    pytest.param(api_event("POST", "/v1/identify", [1, 2]), 400, "validation_error", "body", id="array"),
    pytest.param(
        api_event("POST", "/v1/track", {"userId": "u1"}), 400, "validation_error", "event", id="no-event"
    ),
    pytest.param(
        api_event("POST", "/v1/alias", {"userId": "u1"}),
        400,
        "validation_error",
        "previousId",
        id="alias-no-prev",
    ),
    pytest.param(
        api_event("POST", "/v1/group", {"userId": "u1"}), 400, "validation_error", "groupId", id="no-group"
    ),
    pytest.param(
        api_event(
            "POST",
            "/v1/batch",
            {"batch": [{"type": "identify"}, {"type": "track", "userId": "u"}]},
        ),
        400,
        "validation_error",
        "batch.0.userId",
        id="batch-every-item",
    ),
    pytest.param(
        api_event("POST", "/v1/batch", {"batch": [{"type": "purchase", "userId": "u"}]}),
        400,
        "validation_error",
        "batch.0.type",
        id="batch-type",
    ),
    pytest.param(
        api_event("POST", "/v1/batch", {"batch": []}), 400, "validation_error", "batch", id="batch-empty"
    ),
    pytest.param(
        api_event("POST", "/v1/customers", {"filter": {}}, query={"limit": "5000"}),
        422,
        "validation_error",
        "query.limit",
        id="search-limit",
    ),
    pytest.param(
        api_event("POST", "/v1/customers", {}), 422, "validation_error", "filter", id="search-no-filter"
    ),
    pytest.param(
        api_event("POST", "/v1/track", {"userId": "u1", "event": "big", "properties": {"blob": big(33_000)}}),
        413,
        "payload_too_large",
        "body",
        id="call-over-32KB",
    ),
    pytest.param(
        api_event(
            "POST",
            "/v1/batch",
            {
                "batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"b": big(30_000)}}]
                * 17
            },
        ),
        413,
        "payload_too_large",
        "batch",
        id="batch-over-500KB",
    ),
    pytest.param(
        api_event(
            "POST",
            "/v1/batch",
            {"batch": [{"type": "identify", "userId": "u", "traits": {"b": big(33_000)}}]},
        ),
        413,
        "payload_too_large",
        "batch.0",
        id="batch-call-over-32KB",
    ),
    pytest.param(api_event("GET", "/v1/unknown"), 404, "not_found", None, id="unknown-route"),
    pytest.param(api_event("GET", "/v1/identify"), 404, "not_found", None, id="wrong-method"),
    pytest.param(
        api_event("DELETE", "/v1/customers/", resource="/v1/customers/{id}"),
        404,
        "not_found",
        None,
        id="delete-no-id",
    ),
]


@pytest.mark.parametrize(("event", "status", "code", "field"), BAD_INPUT)
def test_bad_input_is_refused_with_a_json_error_and_nothing_queued(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    event: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    # GIVEN a request a caller might get wrong
    # WHEN it is handled
    answer = call_api(event, lambda_context)

    # THEN the answer is the documented status with {code, message} naming the field at fault
    assert (answer.status, answer.body["code"]) == (status, code)
    assert answer.body["message"]
    if field is not None:
        assert answer.body["field"] == field
        assert field in answer.body["message"]
    # AND nothing was queued or sent
    assert queued(stack) == []
    assert fake_cio.requests == []


def test_batch_just_under_500KB_is_accepted(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN a batch of 15 calls of about 30 KB (about 450 KB together)
    calls = [{"type": "track", "userId": "u", "event": "e", "properties": {"b": big(30_000)}}] * 15

    # WHEN it is posted
    answer = call_api(api_event("POST", "/v1/batch", {"batch": calls}), lambda_context)

    # THEN it is queued
    assert answer.status == 200
    assert len(queued(stack)) == 15


# ---- enqueue failures ------------------------------------------------------------------------


def test_enqueue_failure_is_503_never_200(
    stack: Stack, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN EVENTS_QUEUE_URL names a queue that does not exist
    missing = stack.events_queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    configure(monkeypatch, EVENTS_QUEUE_URL=missing)

    # WHEN a call and a batch are posted
    single = call_api(api_event("POST", "/v1/identify", {"userId": "u1"}), lambda_context)
    batch = call_api(
        api_event("POST", "/v1/batch", {"batch": [{"type": "identify", "userId": "u1"}]}), lambda_context
    )

    # THEN each caller is told 503 with a JSON reason, and nothing is on the real queue
    assert (single.status, single.body["code"]) == (503, "enqueue_failed")
    assert (batch.status, batch.body["code"]) == (503, "enqueue_failed")
    assert queued(stack) == []


def test_missing_queue_configuration_is_503(
    stack: Stack, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN EVENTS_QUEUE_URL is not set
    monkeypatch.delenv("EVENTS_QUEUE_URL")
    configure(monkeypatch)

    # WHEN a call is posted
    answer = call_api(api_event("POST", "/v1/identify", {"userId": "u1"}), lambda_context)

    # THEN 503 names the missing variable
    assert answer.status == 503
    assert "EVENTS_QUEUE_URL" in answer.body["message"]


# ---- Customer.io usage guidelines ------------------------------------------------------------


def test_event_name_policy_reject_refuses_non_snake_case(
    stack: Stack, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN EVENT_NAME_POLICY=reject
    configure(monkeypatch, EVENT_NAME_POLICY="reject")

    # WHEN a Title Case event, a strict-mode batch holding one, and a semantic event are posted
    single = call_api(
        api_event("POST", "/v1/track", {"userId": "u1", "event": "Order Completed"}), lambda_context
    )
    batch = call_api(
        api_event(
            "POST",
            "/v1/batch",
            {
                "batch": [
                    {"type": "track", "userId": "u1", "event": "ok_name"},
                    {"type": "track", "userId": "u1", "event": "Bad"},
                ]
            },
            headers={"X-Strict-Mode": "1"},
        ),
        lambda_context,
    )
    semantic = call_api(
        api_event("DELETE", "/v1/customers/u1", resource="/v1/customers/{id}", path_parameters={"id": "u1"}),
        lambda_context,
    )

    # THEN the first two are 400 naming the event field and queue nothing; the semantic event is exempt
    assert (single.status, single.body["field"]) == (400, "event")
    assert (batch.status, batch.body["field"]) == (400, "batch.1.event")
    assert semantic.status == 200
    assert [b["event"] for b in bodies(queued(stack))] == ["User Deleted"]


@pytest.mark.parametrize(("policy", "warned"), [("warn", True), ("off", False)])
def test_event_name_policy_warn_logs_and_counts_but_queues(
    stack: Stack,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    policy: str,
    warned: bool,
) -> None:
    # GIVEN EVENT_NAME_POLICY=warn (the default) or off
    configure(monkeypatch, EVENT_NAME_POLICY=policy)

    # WHEN a Title Case event is posted
    with captured_logs() as logs:
        answer = call_api(
            api_event("POST", "/v1/track", {"userId": "u1", "event": "Order Completed"}), lambda_context
        )

    # THEN it is queued; with warn a warning and a metric say so, with off nothing does
    assert answer.status == 200
    assert len(queued(stack)) == 1
    assert ("event name is not snake_case" in logs.messages("WARNING")) is warned
    assert ("EventNameNotSnakeCase" in metrics_from(capsys.readouterr().out)) is warned


def test_email_shaped_user_id_warns_without_logging_the_email(
    stack: Stack, lambda_context: LambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a call whose userId is an email address
    call = {"userId": "ada.lovelace@example.com", "traits": {"plan": "pro"}}

    # WHEN it is posted
    with captured_logs() as logs:
        answer = call_api(api_event("POST", "/v1/identify", call), lambda_context)

    # THEN it is queued, with a warning and a metric, and the address appears in no log line
    assert answer.status == 200
    assert any("email" in m for m in logs.messages("WARNING"))
    assert "ada.lovelace" not in logs.text()
    assert metrics_from(capsys.readouterr().out)["EmailShapedUserId"] == 1


# ---- observability ---------------------------------------------------------------------------


def test_request_logs_carry_the_request_id_and_metrics_count_calls(
    stack: Stack, lambda_context: LambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a batch of three calls
    event = api_event(
        "POST", "/v1/batch", {"batch": [{"type": "identify", "userId": f"u{i}"} for i in range(3)]}
    )

    # WHEN it is handled
    with captured_logs() as logs:
        call_api(event, lambda_context)

    # THEN every log line of the request carries API Gateway's request id
    assert logs.lines
    assert {line.get("correlation_id") for line in logs.lines} == {event["requestContext"]["requestId"]}
    # AND the Accepted metric counts the calls
    assert metrics_from(capsys.readouterr().out)["Accepted"] == 3


def test_rejected_requests_are_counted(
    stack: Stack, lambda_context: LambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN three bad requests
    events = [
        api_event("POST", "/v1/identify", {}),
        api_event("POST", "/v1/identify", raw_body="nope"),
        api_event("POST", "/v1/track", {"userId": "u", "event": "e", "properties": {"b": big(40_000)}}),
    ]

    # WHEN they are handled
    for event in events:
        call_api(event, lambda_context)

    # THEN each one counts as Rejected
    assert metrics_from(capsys.readouterr().out)["Rejected"] == 3


def test_passthrough_counts_customerio_requests_and_latency(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a fake Customer.io that takes about 50 ms per answer
    fake_cio.latency = 0.05

    # WHEN the segments route is called
    call_api(api_event("GET", "/v1/segments"), lambda_context)

    # THEN one Customer.io request and its latency were recorded
    metrics = metrics_from(capsys.readouterr().out)
    assert metrics["CustomerIORequests"] == 1
    assert 50 <= metrics["CustomerIOLatency"] < 2_000
