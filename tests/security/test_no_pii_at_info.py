"""At INFO (the deployed log level) no email address, trait value or message_data value is logged.

Every operation runs with distinctive personal data, on success and on each kind of failure
(including Customer.io rejecting the payload with an error message that quotes it back, and the
relay's own validation errors). Every record the layer's logger emits at INFO or above, and every
other logger's INFO+ output, is checked for those values.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import Stack
from tests.integration import call_api
from tests.security import all_logs
from tests.support import LambdaContext, api_event, load_function, sqs_records_from

EMAIL = "pii.ada.7c1@example.org"
USER_EMAIL = "pii.user.5e3@example.org"  # an email-shaped userId: the relay warns, without the value
TRAIT = "TRAIT-VALUE-9f2d1"
PROPERTY = "PROPERTY-VALUE-31a7"
MESSAGE_DATA = "MSGDATA-VALUE-41d8e"
NAME = "Adaline Piiworth"
PERSONAL = [EMAIL, USER_EMAIL, TRAIT, PROPERTY, MESSAGE_DATA, NAME]

IDENTIFY = {"userId": USER_EMAIL, "traits": {"email": EMAIL, "name": NAME, "plan": TRAIT}}
TRACK = {"userId": "user-1", "event": "Order Completed", "properties": {"note": PROPERTY, "email": EMAIL}}
SEND = {
    "transactional_message_id": "receipt",
    "to": f"{NAME} <{EMAIL}>",
    "identifiers": {"email": EMAIL},
    "message_data": {"note": MESSAGE_DATA, "name": NAME},
}
# Customer.io answering 400 with a message that quotes the payload back (the relay reports the reason).
ECHO = Fault(status=400, body={"meta": {"errors": [f"invalid value {EMAIL} / {TRAIT} / {MESSAGE_DATA}"]}})
OUTCOMES: dict[str, list[Fault]] = {
    "success": [],
    "429": [Fault(status=429, retry_after="3")],
    "500": [Fault(status=500)],
    "timeout": [Fault.slow(1.0)],
    "401": [Fault(status=401), Fault(status=401)],
    "400-echo": [ECHO],
}


@pytest.fixture(autouse=True)
def _short_timeout(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERIO_READ_TIMEOUT", "0.3")
    from tests.conftest import reset_caches  # noqa: PLC0415

    reset_caches()


def info_text(records: list[logging.LogRecord], lines: list[str]) -> str:
    return "\n".join(
        line for record, line in zip(records, lines, strict=True) if record.levelno >= logging.INFO
    )


def assert_no_personal_data(text: str) -> None:
    leaked = [value for value in PERSONAL if value in text or json.dumps(value)[1:-1] in text]
    assert leaked == [], f"personal data logged at INFO or above: {leaked}"


def deliver(stack: Stack, function: str, queue_url: str, queue_arn: str, context: LambdaContext) -> None:
    messages = stack.receive(queue_url)
    assert messages
    with contextlib.suppress(BatchProcessingError):  # raised by design when every record failed
        load_function(function).lambda_handler(sqs_records_from(messages, queue_arn), context)


def events_operations(stack: Stack, context: LambdaContext) -> None:
    for path, body in (("/v1/identify", IDENTIFY), ("/v1/track", TRACK)):
        call_api(api_event("POST", path, body), context)
    deliver(stack, "events", stack.events_queue_url, stack.events_queue_arn, context)
    call_api(
        api_event(
            "POST",
            "/v1/customers",
            {"filter": {"and": [{"attribute": {"field": "email", "operator": "eq", "value": EMAIL}}]}},
        ),
        context,
    )
    call_api(
        api_event(
            "DELETE",
            f"/v1/customers/{USER_EMAIL}",
            path_parameters={"id": USER_EMAIL},
            resource="/v1/customers/{id}",
        ),
        context,
    )


def email_operations(stack: Stack, context: LambdaContext) -> None:
    call_api(
        api_event("POST", "/v1/send/email", SEND), context, handler=load_function("email").lambda_handler
    )
    stack.sqs.send_message(
        QueueUrl=stack.email_queue_url, MessageBody=json.dumps({**SEND, "message_data": {"x": MESSAGE_DATA}})
    )
    deliver(stack, "email", stack.email_queue_url, stack.email_queue_arn, context)


@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("operations", [events_operations, email_operations], ids=["events", "email"])
def test_no_personal_data_at_info(
    operations: Any,
    outcome: str,
    stack: Stack,
    fake_cio: FakeCustomerIO,
    lambda_context: LambdaContext,
) -> None:
    # GIVEN Customer.io answering with `outcome` (faults apply to every request of the operation)
    for _ in range(6):
        if OUTCOMES[outcome]:
            fake_cio.fail("*", *OUTCOMES[outcome])

    # WHEN the operations run with distinctive personal data
    with all_logs() as logs:
        operations(stack, lambda_context)

    # THEN something was logged, and none of it at INFO or above holds the personal data
    assert logs.records
    assert_no_personal_data(info_text(logs.records, logs.lines))


@pytest.mark.parametrize(
    ("function", "path", "body"),
    [
        ("events", "/v1/identify", {"traits": {"email": EMAIL, "plan": TRAIT}}),  # no userId
        ("events", "/v1/track", {"userId": "u1", "event": "", "properties": {"note": PROPERTY}}),
        ("events", "/v1/identify", {"userId": "u1", "traits": {"blob": TRAIT * 3000}}),  # over 32 KB
        ("email", "/v1/send/email", {**SEND, "identifiers": {"email": EMAIL, "id": "x"}}),
        ("email", "/v1/send/email", {**SEND, "cc": ", ".join(f"{i}{EMAIL}" for i in range(20))}),
        ("email", "/v1/send/email", {**SEND, "send_at": "tomorrow"}),
    ],
    ids=["no-id", "empty-event", "too-large", "two-identifiers", "too-many-recipients", "bad-send-at"],
)
def test_no_personal_data_in_validation_errors_at_info(
    function: str, path: str, body: dict[str, Any], stack: Stack, lambda_context: LambdaContext
) -> None:
    # GIVEN an invalid request carrying personal data
    handler = load_function(function).lambda_handler
    # WHEN it is refused
    with all_logs() as logs:
        answer = call_api(api_event("POST", path, body), lambda_context, handler=handler)
    # THEN it is a 4xx, and nothing at INFO or above holds the personal data
    assert 400 <= answer.status < 500
    assert_no_personal_data(info_text(logs.records, logs.lines))


def test_pii_detector_sees_a_logged_email(stack: Stack, lambda_context: LambdaContext) -> None:
    # GIVEN the capture used above; WHEN the layer's logger logs an email at INFO; THEN it is seen
    from cio_relay.observability import logger  # noqa: PLC0415

    with all_logs() as logs:
        logger.info("sent", extra={"to": EMAIL})
    with pytest.raises(AssertionError):
        assert_no_personal_data(info_text(logs.records, logs.lines))
