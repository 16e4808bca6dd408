"""Fuzzing both handlers end to end: API Gateway events and SQS batches of hostile bodies.

Real handlers, moto queues (with their dead-letter queues) and the fake Customer.io. The properties:
- an API request never gets a 5xx, every error answer is docs/design.md's JSON ({code, message}), and a
  refused request queues nothing and calls Customer.io for nothing;
- an SQS invocation never raises anything but the all-records-failed BatchProcessingError, and every
  record ends exactly one way: delivered to the fake, reported for retry, or dead-lettered with a
  FailureReason.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from cio_relay import forwarding, transactional
from cio_relay.errors import InvalidRequest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from local_stack.customerio import FakeCustomerIO
from tests.conftest import Stack
from tests.integration import Handler, call_api, poll
from tests.reliability import (
    BATCHES,
    CALLS,
    EMAILS,
    JSON,
    RAW_NASTIES,
    SAFE_JSON_OBJECT,
    TEXT,
    VALID_CALLS,
    VALID_EMAILS,
    dumps,
    write_figures,
)
from tests.support import LambdaContext, api_event, load_function

# Examples here cost an invocation each: a failure is reported as found (no shrinking, which could
# run for minutes), and hypothesis' example database replays it first on the next run.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Received multipart/form-data:UserWarning"),
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Each SQS example makes a dozen moto calls and an invocation: fewer examples, more records each.
SQS_FUZZ = settings(FUZZ, max_examples=60)
OUTCOMES: Counter[str] = Counter()
SQS_BODY_LIMIT = 256 * 1024
SENT_KEYS: dict[int, dict[str, str]] = {}  # per test run: key -> payload hash of what the fake got

EVENT_BODIES = RAW_NASTIES | st.builds(dumps, CALLS | BATCHES | VALID_CALLS | JSON)
EMAIL_BODIES = RAW_NASTIES | st.builds(dumps, EMAILS | VALID_EMAILS | JSON)
CONTENT_TYPES = st.one_of(
    st.sampled_from(["application/json", "application/json; charset=utf-8"]),
    st.just("application/json"),
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
)
EVENT_ROUTES = st.sampled_from(
    [
        ("POST", "/v1/identify"),
        ("POST", "/v1/track"),
        ("POST", "/v1/page"),
        ("POST", "/v1/screen"),
        ("POST", "/v1/group"),
        ("POST", "/v1/alias"),
        ("POST", "/v1/batch"),
        ("POST", "/v1/customers"),
        ("GET", "/v1/segments"),
        ("DELETE", "/v1/customers/{id}"),
        ("PUT", "/v1/identify"),
        ("POST", "/v1/nowhere"),
    ]
)
QUERIES = st.none() | st.dictionaries(st.sampled_from(["start", "limit", "x"]), TEXT | st.integers().map(str))


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    api = {k.removeprefix("api "): v for k, v in OUTCOMES.items() if k.startswith("api ")}
    sqs = {k.removeprefix("sqs "): v for k, v in OUTCOMES.items() if k.startswith("sqs ")}
    statuses = ", ".join(f"{v} x {k}" for k, v in sorted(api.items()))
    endings = ", ".join(f"{v} {k}" for k, v in sorted(sqs.items()))
    write_figures(
        "Fuzzing: handlers",
        [
            f"- API requests: {sum(api.values())} ({statuses}); 0 answered 5xx, "
            "every error answer was {code, message} JSON.",
            f"- SQS records: {sum(sqs.values())} ({endings}); "
            "0 unhandled exceptions, 0 records left neither delivered, retried nor dead-lettered.",
        ],
    )


def drain(stack: Stack, url: str) -> None:
    """Delete every visible message (PurgeQueue is allowed once a minute)."""
    while messages := stack.receive(url):
        for message in messages:
            stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def clean(stack: Stack, fake: FakeCustomerIO, *urls: str) -> None:
    """Each example starts with a fresh fake and empty queues (those it uses)."""
    fake.reset()
    for url in urls:
        drain(stack, url)


def queue_depth(stack: Stack, url: str) -> int:
    depth = stack.depth(url)
    return depth["visible"] + depth["in_flight"]


def assert_json_error(status: int, body: Any) -> None:
    assert status < 500, f"5xx for a client's input: {status} {body}"
    if status >= 400:
        assert isinstance(body, dict)
        assert isinstance(body.get("code"), str)
        assert isinstance(body.get("message"), str)


def api_request(
    method: str,
    path: str,
    raw: str,
    content_type: str,
    base64_body: bool,
    query: dict[str, str] | None,
    **kw: Any,
) -> dict[str, Any]:
    event = api_event(method, path, raw_body=raw, query=query, headers={"Content-Type": content_type}, **kw)
    if base64_body:
        event["body"] = base64.b64encode(raw.encode("utf-8", "surrogatepass")).decode()
        event["isBase64Encoded"] = True
    return event


def valid_for(route: tuple[str, str]) -> st.SearchStrategy[str]:
    """Bodies the route should take, with hostile content: so the fuzzer also reaches the 200 path."""
    kind = route[1].rsplit("/", 1)[-1]
    if kind == "batch":
        return st.builds(lambda calls: dumps({"batch": calls}), st.lists(VALID_CALLS, min_size=1, max_size=5))
    if kind == "customers" and route[0] == "POST":
        return st.builds(lambda f: dumps({"filter": f}), SAFE_JSON_OBJECT)
    calls = VALID_CALLS.filter(lambda c: c["type"] == kind) if kind in CALL_KINDS else VALID_CALLS
    return st.builds(lambda c: dumps({k: v for k, v in c.items() if k != "type"}), calls)


CALL_KINDS = ("identify", "track", "page", "screen", "group", "alias")
ROUTE_AND_BODY = EVENT_ROUTES.flatmap(
    lambda route: st.tuples(st.just(route), st.one_of(EVENT_BODIES, valid_for(route), valid_for(route)))
)


@FUZZ
@given(
    route_and_body=ROUTE_AND_BODY,
    content_type=CONTENT_TYPES,
    base64_body=st.booleans(),
    query=QUERIES,
    path_id=TEXT | st.text(max_size=2000),
)
def test_events_api_never_answers_5xx(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    route_and_body: tuple[tuple[str, str], str],
    content_type: str,
    base64_body: bool,
    query: dict[str, str] | None,
    path_id: str,
) -> None:
    clean(stack, fake_cio, stack.events_queue_url)
    route, raw = route_and_body
    method, path = route
    parameters = None
    if "{id}" in path:
        assume(path_id and "/" not in path_id)
        parameters = {"id": path_id}
        path = path.replace("{id}", path_id)
    # GIVEN any body, content type and query on any route
    event = api_request(
        method, path, raw, content_type, base64_body, query, resource=route[1], path_parameters=parameters
    )

    # WHEN API Gateway hands it to EventsFunction
    answer = call_api(event, lambda_context)

    # THEN it is never a 5xx, and errors are JSON {code, message}
    assert_json_error(answer.status, answer.body)
    OUTCOMES[f"api {answer.status}"] += 1
    queued = queue_depth(stack, stack.events_queue_url)
    if answer.status == 200 and path.startswith("/v1/customers") and method == "POST":
        assert len(fake_cio.requests) >= 1  # a search is a synchronous pass-through
    elif answer.status == 200 and method != "GET":
        # AND what it answered queued is exactly what is on the queue
        assert queued == len(answer.body["message_ids"]) == len(answer.body["call_ids"]) >= 1
        assert fake_cio.requests == []
    elif answer.status >= 400 and answer.body["code"] in (
        "validation_error",
        "invalid_request",
        "payload_too_large",
    ):
        # AND a refused request queued nothing and called nothing
        assert queued == 0
        assert fake_cio.requests == []


@FUZZ
@given(
    raw=st.one_of(EMAIL_BODIES, st.builds(dumps, VALID_EMAILS)),
    content_type=CONTENT_TYPES,
    base64_body=st.booleans(),
    key=st.none() | TEXT | st.text(min_size=250, max_size=300),
)
def test_email_api_never_answers_5xx(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    raw: str,
    content_type: str,
    base64_body: bool,
    key: str | None,
) -> None:
    clean(stack, fake_cio, stack.email_queue_url)
    # GIVEN any body, content type and Idempotency-Key
    event = api_request("POST", "/v1/send/email", raw, content_type, base64_body, None)
    if key is not None:
        event["headers"]["Idempotency-Key"] = key
        event["multiValueHeaders"]["Idempotency-Key"] = [key]

    # WHEN API Gateway hands it to EmailFunction
    answer = call_api(event, lambda_context, handler=load_function("email").lambda_handler)

    # THEN it is never a 5xx, and errors are JSON {code, message}
    assert_json_error(answer.status, answer.body)
    OUTCOMES[f"api {answer.status}"] += 1
    if answer.status == 200:
        assert answer.body["delivery_id"]
    if answer.status >= 400 and answer.body["code"] in (
        "validation_error",
        "invalid_request",
        "payload_too_large",
    ):
        # AND a refused email was neither sent nor deferred
        assert fake_cio.emails == []
        assert queue_depth(stack, stack.email_queue_url) == 0


def dead_lettered(stack: Stack, dlq_url: str) -> dict[str, dict[str, str]]:
    """SourceMessageId -> the reason attributes, for everything on a dead-letter queue."""
    found: dict[str, dict[str, str]] = {}
    while messages := stack.receive(dlq_url):
        for message in messages:
            attributes = {k: v["StringValue"] for k, v in (message.get("MessageAttributes") or {}).items()}
            found[attributes.get("SourceMessageId", "?")] = attributes
    return found


def enqueue(stack: Stack, url: str, bodies: list[tuple[str, str | None]]) -> list[str]:
    entries: list[dict[str, Any]] = [
        {
            "Id": str(i),
            "MessageBody": body,
            "MessageAttributes": {"IdempotencyKey": {"DataType": "String", "StringValue": key}}
            if key
            else {},
        }
        for i, (body, key) in enumerate(bodies)
    ]
    answer = stack.sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert not answer.get("Failed"), answer["Failed"]
    by_entry = {e["Id"]: e["MessageId"] for e in answer["Successful"]}
    return [by_entry[str(i)] for i in range(len(bodies))]


def sqs_safe(body: str) -> bool:
    """What SQS itself accepts as a message body (XML 1.0 characters, 256 KB)."""
    allowed = all(
        c in "\t\n\r" or "\x20" <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c > "\uffff" for c in body
    )
    return allowed and 0 < len(body.encode("utf-8", "surrogatepass")) <= SQS_BODY_LIMIT


def settle(
    stack: Stack,
    context: LambdaContext,
    *,
    url: str,
    arn: str,
    dlq: str,
    handler: Handler,
    sent_ids: list[str],
) -> tuple[set[str], dict[str, dict[str, str]]]:
    """One poll of the queue; returns (ids reported for retry, dead-lettered reasons by id)."""
    result = poll(stack, context, queue_url=url, queue_arn=arn, max_records=len(sent_ids), handler=handler)
    assert sorted(r["messageId"] for r in result.records) == sorted(sent_ids)
    if result.error is not None:
        # THEN the only exception a batch may raise is "every record failed" (Lambda slows polling)
        assert isinstance(result.error, BatchProcessingError), repr(result.error)
    retried = set(result.failed_ids)
    reasons = dead_lettered(stack, dlq)
    # AND a retried record is still on the queue (in flight), nothing else is
    assert queue_depth(stack, url) == len(retried)
    for record in result.records:
        if record["messageId"] in retried:
            stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=record["receiptHandle"])
    return retried, reasons


@SQS_FUZZ
@given(bodies=st.lists(st.one_of(EVENT_BODIES, st.builds(dumps, VALID_CALLS)), min_size=1, max_size=6))
def test_events_queue_records_end_delivered_retried_or_dead_lettered(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, bodies: list[str]
) -> None:
    bodies = [b for b in bodies if sqs_safe(b)]
    assume(bodies)
    clean(stack, fake_cio)
    # GIVEN a batch of EventsQueue messages, any mix of good and hostile bodies
    ids = enqueue(stack, stack.events_queue_url, [(b, None) for b in bodies])

    # WHEN Lambda's event source mapping hands them to EventsFunction
    retried, reasons = settle(
        stack,
        lambda_context,
        url=stack.events_queue_url,
        arn=stack.events_queue_arn,
        dlq=stack.events_dlq_url,
        handler=load_function("events").lambda_handler,
        sent_ids=ids,
    )

    # THEN each record ended exactly one way
    delivered_ids = {call.get("messageId") for call in fake_cio.pipelines_calls()}
    for message_id, body in zip(ids, bodies, strict=True):
        record = SQSRecord({"messageId": message_id, "body": body, "attributes": {}, "messageAttributes": {}})
        try:
            expected = {c["messageId"] for c in forwarding.parse_queue_body(record)}
        except InvalidRequest:
            expected = set()
        delivered = bool(expected) and expected <= delivered_ids
        outcomes = [delivered, message_id in retried, message_id in reasons]
        assert sum(outcomes) == 1, f"record {body[:200]!r}: delivered/retried/dead-lettered = {outcomes}"
        if message_id in reasons:
            assert reasons[message_id]["FailureReason"]
            assert reasons[message_id]["FailureStatus"]
        OUTCOMES["sqs " + ("delivered" if delivered else "retried" if outcomes[1] else "dead-lettered")] += 1


@SQS_FUZZ
@given(
    items=st.lists(
        st.tuples(
            st.one_of(EMAIL_BODIES, st.builds(dumps, VALID_EMAILS)),
            st.none() | st.text(min_size=1, max_size=300),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_email_queue_records_end_delivered_retried_or_dead_lettered(
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
    items: list[tuple[str, str | None]],
) -> None:
    items = [(b, k) for b, k in items if sqs_safe(b) and (k is None or sqs_safe(k))]
    assume(items)
    clean(stack, fake_cio)
    # GIVEN a batch of EmailQueue messages, any mix of good and hostile bodies and keys
    ids = enqueue(stack, stack.email_queue_url, items)

    # WHEN Lambda's event source mapping hands them to EmailFunction
    retried, reasons = settle(
        stack,
        lambda_context,
        url=stack.email_queue_url,
        arn=stack.email_queue_arn,
        dlq=stack.email_dlq_url,
        handler=load_function("email").lambda_handler,
        sent_ids=ids,
    )

    # THEN each record ended exactly one way: "delivered" is sent to the fake now, or an idempotent
    # replay of a key an earlier example already sent (then nothing is sent again)
    already_sent = SENT_KEYS.setdefault(id(stack), {})
    sent_now = [json.dumps(e["json"], sort_keys=True) for e in fake_cio.emails]
    for message_id, (body, key) in zip(ids, items, strict=True):
        attributes = {"IdempotencyKey": {"stringValue": key, "dataType": "String"}} if key else {}
        record = SQSRecord(
            {"messageId": message_id, "body": body, "attributes": {}, "messageAttributes": attributes}
        )
        try:
            channel, request = transactional.parse_queue_record(record)
            identity = transactional.queue_key(record, channel, request, dedupe=False)
            wire = json.dumps(request.wire(), sort_keys=True)
        except InvalidRequest:
            identity, wire = None, None
        bound = already_sent.get(identity.key) if identity is not None else None
        replay = identity is not None and bound == identity.payload_hash
        reused = identity is not None and bound not in (None, identity.payload_hash)  # KeyReused
        delivered = wire is not None and not reused and (wire in sent_now or replay)
        outcomes = [delivered, message_id in retried, message_id in reasons]
        assert sum(outcomes) == 1, f"record {body[:200]!r}: delivered/retried/dead-lettered = {outcomes}"
        if message_id in reasons:
            assert reasons[message_id]["FailureReason"]
            assert reasons[message_id]["FailureStatus"]
        if delivered and identity is not None:
            already_sent.setdefault(identity.key, identity.payload_hash)
        OUTCOMES["sqs " + ("delivered" if delivered else "retried" if outcomes[1] else "dead-lettered")] += 1
    # AND no email reached Customer.io that no record asked for
    assert len(fake_cio.emails) <= len(items)
