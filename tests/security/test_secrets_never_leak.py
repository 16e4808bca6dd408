"""No Customer.io key ever leaves the relay: not in logs, answers, exceptions, metrics or queues.

Every operation (both functions, API and SQS side) runs against the fake Customer.io with
distinctive key values, once per outcome: success, 401 (also with a wrong key in the secret), 403,
429 with Retry-After, 5xx, read timeout, dropped connection, 400, and the configuration errors (key
missing, secret unreadable). Everything observable is collected: every log record of the layer's
logger at every level and of any other logger at INFO and above, stdout/stderr (EMF metrics),
API answers with their headers, raised exceptions with their tracebacks and causes, dead-letter and
deferred messages with their attributes, and the idempotency table. No key may appear in it raw,
JSON-escaped, or inside any base64 text (which covers "Basic base64(key:)").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import reset_caches, wire_stack
from tests.security import Exposure, all_logs, find_leaks
from tests.support import REGION, LambdaContext, api_event, load_function, sqs_records_from

PIPELINES_KEY = "pk-LEAKCHECK-5b9f2e71c4a8"
APP_KEY = "app-LEAKCHECK-83d1a6f0e2b7"
SITE_ID = "site-LEAKCHECK-7731d0"
TRACK_KEY = "trk-LEAKCHECK-0c4e9a55f1"
WRONG_PIPELINES_KEY = "pk-WRONGKEY-19e8c2a7d3f6"
WRONG_APP_KEY = "app-WRONGKEY-6a2f0b91c8e4"
SECRETS = [PIPELINES_KEY, APP_KEY, SITE_ID, TRACK_KEY, WRONG_PIPELINES_KEY, WRONG_APP_KEY]
READ_TIMEOUT = 0.3

EMAIL = {"transactional_message_id": 3, "to": "someone@example.com", "identifiers": {"id": "person-1"}}
TRACK = {"userId": "user-1", "event": "order_completed", "properties": {"total": 3}}

# One outcome per Customer.io behaviour; each queues enough faults for the relay's own retries
# (one immediate retry after a 401/403 re-read, one after a dropped connection).
FAULTS: dict[str, list[Fault]] = {
    "success": [],
    "401": [Fault(status=401), Fault(status=401)],
    "403": [Fault(status=403), Fault(status=403)],
    "429": [Fault(status=429, retry_after="7")],
    "500": [Fault(status=500)],
    "503": [Fault(status=503)],
    "timeout": [Fault.slow(READ_TIMEOUT * 3)],
    "dropped": [Fault(drop=True), Fault(drop=True)],
    "400": [Fault(status=400)],
}


@dataclass
class SecretStack:
    fake: FakeCustomerIO
    events_queue_url: str
    events_queue_arn: str
    events_dlq_url: str
    email_queue_url: str
    email_queue_arn: str
    email_dlq_url: str
    table: str
    sqs: Any


def wire(monkeypatch: pytest.MonkeyPatch, fake: FakeCustomerIO, secret: dict[str, str]) -> SecretStack:
    stack = wire_stack(monkeypatch, fake, secret=secret)
    monkeypatch.setenv("CUSTOMERIO_READ_TIMEOUT", str(READ_TIMEOUT))
    reset_caches()
    return SecretStack(
        fake,
        stack.events_queue_url,
        stack.events_queue_arn,
        stack.events_dlq_url,
        stack.email_queue_url,
        stack.email_queue_arn,
        stack.email_dlq_url,
        stack.idempotency_table,
        stack.sqs,
    )


@pytest.fixture
def distinct_keys() -> Iterator[FakeCustomerIO]:
    with FakeCustomerIO(pipelines_api_key=PIPELINES_KEY, app_api_key=APP_KEY) as fake:
        yield fake


# ---- the operations ----------------------------------------------------------------------------


def api_call(handler: str, event: dict[str, Any], context: LambdaContext, seen: Exposure) -> None:
    try:
        answer = load_function(handler).lambda_handler(event, context)
    except Exception as exc:  # an API invocation should not raise; if it does, its text is checked too
        seen.add(exc)
        return
    seen.add(answer)


def sqs_call(
    handler: str, s: SecretStack, queue_url: str, queue_arn: str, context: LambdaContext, seen: Exposure
) -> None:
    messages = s.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    ).get("Messages", [])
    assert messages, "nothing to deliver"
    try:
        seen.add(load_function(handler).lambda_handler(sqs_records_from(messages, queue_arn), context))
    except Exception as exc:  # BatchProcessingError when every record failed
        seen.add(exc, exc.__cause__ or "", exc.__context__ or "")


def events_api(s: SecretStack, context: LambdaContext, seen: Exposure) -> None:
    api_call("events", api_event("POST", "/v1/track", TRACK), context, seen)
    api_call("events", api_event("POST", "/v1/customers", {"filter": {"segment": {"id": 1}}}), context, seen)
    api_call("events", api_event("GET", "/v1/segments"), context, seen)


def events_sqs(s: SecretStack, context: LambdaContext, seen: Exposure) -> None:
    s.sqs.send_message(QueueUrl=s.events_queue_url, MessageBody=json.dumps({**TRACK, "type": "track"}))
    sqs_call("events", s, s.events_queue_url, s.events_queue_arn, context, seen)


def email_api(s: SecretStack, context: LambdaContext, seen: Exposure) -> None:
    event = api_event("POST", "/v1/send/email", EMAIL, headers={"Idempotency-Key": f"k-{id(seen)}"})
    api_call("email", event, context, seen)


def email_sqs(s: SecretStack, context: LambdaContext, seen: Exposure) -> None:
    s.sqs.send_message(
        QueueUrl=s.email_queue_url,
        MessageBody=json.dumps(EMAIL),
        MessageAttributes={"IdempotencyKey": {"DataType": "String", "StringValue": f"q-{id(seen)}"}},
    )
    sqs_call("email", s, s.email_queue_url, s.email_queue_arn, context, seen)


OPERATIONS: dict[str, Callable[[SecretStack, LambdaContext, Exposure], None]] = {
    "events-api": events_api,
    "events-sqs": events_sqs,
    "email-api": email_api,
    "email-sqs": email_sqs,
}


def everything_stored(s: SecretStack, seen: Exposure) -> None:
    """What an operator can read afterwards: queues, dead-letter queues, the idempotency table."""
    for url in (s.events_queue_url, s.events_dlq_url, s.email_queue_url, s.email_dlq_url):
        while messages := s.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", []):
            seen.add(messages)
    seen.add(boto3.client("dynamodb", region_name=REGION).scan(TableName=s.table)["Items"])


def assert_no_leak(seen: Exposure, logs: str, out: str) -> None:
    for where, text in (("logs", logs), ("stdout/stderr", out), ("answers, exceptions, queues", seen.text())):
        assert find_leaks(text, SECRETS) == [], f"a key appears in the {where}"


def run(
    operation: str,
    outcome: str,
    s: SecretStack,
    context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Exposure, str, str]:
    seen = Exposure()
    if FAULTS[outcome]:
        s.fake.fail("*", *FAULTS[outcome])
    with all_logs() as logs:
        OPERATIONS[operation](s, context, seen)
    everything_stored(s, seen)
    captured = capsys.readouterr()
    return seen, logs.text(), captured.out + captured.err


@pytest.mark.parametrize("outcome", list(FAULTS))
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_no_key_leaks_on_any_outcome(
    operation: str,
    outcome: str,
    aws: None,
    distinct_keys: FakeCustomerIO,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the relay's secret holds distinctive keys, and Customer.io answers with `outcome`
    s = wire(monkeypatch, distinct_keys, {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY})

    # WHEN the operation runs
    seen, logs, out = run(operation, outcome, s, lambda_context, capsys)

    # THEN the operation did talk to Customer.io with the keys (so there was something to leak) ...
    assert distinct_keys.requests, "the operation never reached Customer.io"
    # ... and no key appears anywhere a caller, an operator or a log reader could look
    assert_no_leak(seen, logs, out)
    assert logs, "no log output was captured"


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_no_key_leaks_when_the_secret_holds_wrong_keys(
    operation: str,
    aws: None,
    distinct_keys: FakeCustomerIO,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a secret whose keys Customer.io refuses (a real 401, re-read and retried once)
    s = wire(
        monkeypatch, distinct_keys, {"pipelines_api_key": WRONG_PIPELINES_KEY, "app_api_key": WRONG_APP_KEY}
    )

    # WHEN the operation runs
    seen, logs, out = run(operation, "success", s, lambda_context, capsys)

    # THEN Customer.io said 401, and neither the wrong keys nor the right ones appear anywhere
    assert any(r.status == 401 for r in distinct_keys.requests)
    assert_no_leak(seen, logs, out)


@pytest.mark.parametrize("operation", ["events-api", "events-sqs"])
def test_no_key_leaks_with_site_id_and_track_key(
    operation: str,
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN Pipelines credentials as site_id + track_api_key (Basic base64("site:track")), and a 401
    with FakeCustomerIO(
        pipelines_api_key=None, site_id=SITE_ID, track_api_key=TRACK_KEY, app_api_key=APP_KEY
    ) as fake:
        s = wire(monkeypatch, fake, {"site_id": SITE_ID, "track_api_key": TRACK_KEY, "app_api_key": APP_KEY})
        for outcome in ("success", "401"):
            # WHEN the operation runs
            seen, logs, out = run(operation, outcome, s, lambda_context, capsys)

            # THEN neither half of the pair appears anywhere
            assert_no_leak(seen, logs, out)


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param({"app_api_key": APP_KEY}, id="no-pipelines-key"),
        pytest.param({"pipelines_api_key": PIPELINES_KEY}, id="no-app-key"),
        pytest.param(
            {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY, "region": "mars"}, id="bad-region"
        ),
    ],
)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_no_key_leaks_from_configuration_errors(
    operation: str,
    secret: dict[str, str],
    aws: None,
    distinct_keys: FakeCustomerIO,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a secret that is incomplete or invalid (the error names the key, never a value)
    s = wire(monkeypatch, distinct_keys, secret)

    # WHEN the operation runs
    seen, logs, out = run(operation, "success", s, lambda_context, capsys)

    # THEN whatever failed, no key value appears anywhere
    assert_no_leak(seen, logs, out)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_no_key_leaks_when_the_secret_cannot_be_read(
    operation: str,
    aws: None,
    distinct_keys: FakeCustomerIO,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN CUSTOMERIO_SECRET_ID names a secret that does not exist (the real one holds the keys)
    s = wire(monkeypatch, distinct_keys, {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY})
    monkeypatch.setenv("CUSTOMERIO_SECRET_ID", "cio-relay/missing")
    reset_caches()

    # WHEN the operation runs
    seen, logs, out = run(operation, "success", s, lambda_context, capsys)

    # THEN Customer.io was never called, and no key appears anywhere
    assert distinct_keys.requests == []
    assert_no_leak(seen, logs, out)


def test_leak_detector_finds_every_form() -> None:
    # GIVEN texts that carry a key raw, JSON-escaped, as a Basic header and inside a longer base64 blob
    import base64  # noqa: PLC0415

    basic = "Authorization: Basic " + base64.b64encode(f"{PIPELINES_KEY}:".encode()).decode()
    pair = base64.b64encode(f"{SITE_ID}:{TRACK_KEY}".encode()).decode()
    blob = base64.urlsafe_b64encode(f'{{"headers": {{"x": "Bearer {APP_KEY}"}}}}'.encode()).decode()

    # WHEN the detector looks; THEN it finds each of them, and nothing in clean text
    assert find_leaks(basic, SECRETS) == [PIPELINES_KEY]
    assert find_leaks(pair, SECRETS) == [SITE_ID, TRACK_KEY]
    assert find_leaks(blob, SECRETS) == [APP_KEY]
    assert find_leaks(f"Bearer {APP_KEY}", SECRETS) == [APP_KEY]
    assert find_leaks("Customer.io answered 401: Unauthorized", SECRETS) == []
