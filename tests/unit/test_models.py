"""Wire models: every validation rule names its field; wire() gives Customer.io's exact JSON."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cio_relay.errors import InvalidRequest, PayloadTooLarge
from cio_relay.models import describe, invalid_request
from cio_relay.models.email import MAX_ATTACHMENTS_BYTES, MAX_PAYLOAD_BYTES, SendEmail, SendEmailResult
from cio_relay.models.pipelines import (
    Alias,
    Batch,
    Call,
    Group,
    Identify,
    PipelinesCall,
    Track,
    delete_person,
)
from pydantic import TypeAdapter, ValidationError

CALL: TypeAdapter[Any] = TypeAdapter(Call)
DAY = 24 * 3600


def field_of(exc: ValidationError) -> str:
    return invalid_request(exc).field or ""


def email(**fields: Any) -> dict[str, Any]:
    """A valid template send, with `fields` replaced (None removes a field)."""
    body: dict[str, Any] = {
        "transactional_message_id": 7,
        "to": "ada@example.com",
        "identifiers": {"id": "user-1"},
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


# --- Pipelines calls -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"type": "identify", "traits": {"plan": "pro"}}, "userId"),
        ({"type": "identify", "userId": ""}, "userId"),
        ({"type": "page", "name": "home"}, "userId"),
        ({"type": "screen", "name": "home"}, "userId"),
        ({"type": "track", "userId": "u1"}, "event"),
        ({"type": "track", "userId": "u1", "event": ""}, "event"),
        ({"type": "track", "event": "signed_up"}, "userId"),
        ({"type": "group", "userId": "u1"}, "groupId"),
        ({"type": "alias", "userId": "u1"}, "previousId"),
        ({"type": "alias", "previousId": "anon-1"}, "userId"),
        ({"type": "shout", "userId": "u1"}, "body"),
    ],
)
def test_call_validation_names_the_field(call: dict[str, Any], field: str) -> None:
    # GIVEN a call that breaks one of Customer.io's rules
    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        CALL.validate_python(call)

    # THEN the error names the field at fault
    error = invalid_request(caught.value)
    assert isinstance(error, InvalidRequest)
    assert error.field == field
    assert error.status == 400
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "call",
    [
        {"type": "identify", "anonymousId": "anon-1"},
        {"type": "identify", "userId": 42},
        {"type": "track", "anonymousId": "anon-1", "event": "viewed"},
        {"type": "page", "userId": "u1"},
        {"type": "screen", "anonymousId": "a"},
        {"type": "group", "groupId": "acme"},
        {"type": "alias", "previousId": "anon-1", "userId": "u1"},
    ],
)
def test_call_validation_accepts_minimal_calls(call: dict[str, Any]) -> None:
    # GIVEN the smallest call Customer.io accepts of each type
    # WHEN it is validated
    model = CALL.validate_python(call)

    # THEN it passes, with its type
    assert model.wire()["type"] == call["type"]


def test_call_wire_keeps_what_the_caller_sent() -> None:
    # GIVEN a call with a numeric userId and fields the model does not declare
    call = {
        "type": "identify",
        "userId": 42,
        "messageId": "m-1",
        "traits": {"email": "ada@example.com"},
        "sentAt": "2024-01-01T00:00:00Z",
    }

    # WHEN it is validated and turned back into JSON
    wire = CALL.validate_python(call).wire()

    # THEN it is what was sent (id stringified like the SDKs do), nothing added but nothing lost
    assert wire == {**call, "userId": "42"}


def test_batch_item_error_names_item_and_field() -> None:
    # GIVEN a batch whose fourth call has no identity
    batch = {"batch": [{"type": "identify", "userId": f"u{i}"} for i in range(3)] + [{"type": "page"}]}

    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        Batch.model_validate(batch)

    # THEN the field is the item's path, without pydantic's discriminator tag
    assert field_of(caught.value) == "batch.3.userId"


def test_batch_must_not_be_empty() -> None:
    with pytest.raises(ValidationError) as caught:
        Batch.model_validate({"batch": []})
    assert field_of(caught.value) == "batch"


def test_batch_calls_fold_shared_context_into_each_call() -> None:
    # GIVEN a batch-level context and integrations, one call with its own context
    batch = Batch.model_validate(
        {
            "batch": [
                {"type": "identify", "userId": "u1"},
                {"type": "track", "userId": "u1", "event": "e", "context": {"ip": "10.0.0.1"}},
            ],
            "context": {"ip": "192.0.2.1", "library": {"name": "x"}},
            "integrations": {"All": True},
        }
    )

    # WHEN the calls are taken out one by one
    calls = batch.calls()

    # THEN each carries the shared values, and its own keys win
    assert calls[0]["context"] == {"ip": "192.0.2.1", "library": {"name": "x"}}
    assert calls[1]["context"] == {"ip": "10.0.0.1", "library": {"name": "x"}}
    assert all(c["integrations"] == {"All": True} for c in calls)


def test_delete_person_is_the_user_deleted_track_event() -> None:
    # GIVEN a user id / WHEN the delete call is built
    call = delete_person("user-9")

    # THEN it is Customer.io's semantic event, not a DELETE request
    assert isinstance(call, Track)
    assert call.wire() == {"type": "track", "userId": "user-9", "event": "User Deleted"}


def test_call_models_are_pipelines_calls() -> None:
    # Every shape shares the identity rule of PipelinesCall; group is identified by groupId.
    assert all(issubclass(m, PipelinesCall) for m in (Identify, Track, Group, Alias))
    assert Group.model_validate({"groupId": "acme"}).wire() == {"type": "group", "groupId": "acme"}


# --- transactional email ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"identifiers": {}}, "identifiers"),
        ({"identifiers": {"id": "u1", "email": "ada@example.com"}}, "identifiers"),
        ({"identifiers": {"phone": "+15550100"}}, "identifiers.phone"),
        ({"identifiers": None}, "identifiers"),
        ({"to": None}, "to"),
        ({"attachments": {"a.pdf": "not base64!!"}}, "attachments"),
        ({"send_at": int(time.time()) + 91 * DAY}, "send_at"),
        ({"send_at": -1}, "send_at"),
        (
            {"transactional_message_id": None, "subject": "Hi", "from": "a@example.com"},
            "transactional_message_id",
        ),
        (
            {"transactional_message_id": None, "body": "<p>x</p>", "from": "a@example.com"},
            "transactional_message_id",
        ),
        ({"transactional_message_id": None, "body": "<p>x</p>", "subject": "Hi"}, "transactional_message_id"),
        ({"transactional_message_id": ""}, "transactional_message_id"),
        ({"transactional_message_id": [7]}, "transactional_message_id"),
        ({"headers": {"X-Count": 1}}, "headers.X-Count"),
    ],
)
def test_send_email_validation_names_the_field(fields: dict[str, Any], field: str) -> None:
    # GIVEN a send that breaks one rule
    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate(email(**fields))

    # THEN the error names the field at fault
    assert field_of(caught.value) == field


@pytest.mark.parametrize("cio_id_key", ["id", "email", "cio_id"])
def test_send_email_accepts_each_single_identifier(cio_id_key: str) -> None:
    SendEmail.model_validate(email(identifiers={cio_id_key: "ada@example.com"}))


def recipients(n: int) -> list[str]:
    # Display names with commas and quotes: each is still one recipient.
    return [f'"Doe, Person {i}" <person{i}@example.com>' for i in range(n)]


def split_to_cc_bcc(addresses: list[str]) -> dict[str, str]:
    third = len(addresses) // 3
    return {
        "to": ", ".join(addresses[:third] or addresses[:1]),
        "cc": ", ".join(addresses[third : 2 * third]),
        "bcc": ", ".join(addresses[2 * third :]),
    }


def test_send_email_fifteen_recipients_across_to_cc_bcc_pass() -> None:
    # GIVEN 15 recipients with display names spread over to, cc and bcc
    fields = split_to_cc_bcc(recipients(15))

    # WHEN / THEN the send is valid
    SendEmail.model_validate(email(**fields))


def test_send_email_sixteen_recipients_name_the_to_field() -> None:
    # GIVEN 16 recipients spread over to, cc and bcc
    fields = split_to_cc_bcc(recipients(16))

    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate(email(**fields))

    # THEN the error names the recipients' field and the limit
    error = invalid_request(caught.value)
    assert error.field == "to"
    assert "15" in error.reason


def attachment_of(encoded_length: int) -> str:
    raw = b"x" * (encoded_length // 4 * 3)
    return base64.b64encode(raw).decode()


def test_send_email_attachments_just_under_two_megabytes_pass() -> None:
    # GIVEN two attachments that together stay under 2 MB of base64
    half = attachment_of(MAX_ATTACHMENTS_BYTES // 2 - 4)

    # WHEN / THEN the send is valid
    SendEmail.model_validate(email(attachments={"a.bin": half, "b.bin": half}))


def test_send_email_attachments_of_two_megabytes_in_all_are_rejected() -> None:
    # GIVEN two attachments that reach 2 MB together, each well under it
    half = attachment_of(MAX_ATTACHMENTS_BYTES // 2)

    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate(email(attachments={"a.bin": half, "b.bin": half}))

    # THEN it is a size error (413) naming the attachments field
    error = invalid_request(caught.value)
    assert isinstance(error, PayloadTooLarge)
    assert error.field == "attachments"


def test_send_email_over_one_megabyte_without_attachments_is_too_large() -> None:
    # GIVEN a body of more than 1 MB
    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate(email(message_data={"blob": "x" * (MAX_PAYLOAD_BYTES + 1)}))

    # THEN it is a size error
    assert isinstance(invalid_request(caught.value), PayloadTooLarge)


def test_send_email_send_at_within_ninety_days_passes() -> None:
    SendEmail.model_validate(email(send_at=int(time.time()) + 89 * DAY))


def test_send_email_wire_has_every_field_with_from_alias() -> None:
    # GIVEN a send with every field docs/design.md lists, built by attribute name
    send_at = int(time.time()) + DAY
    attachments = {"invoice.pdf": base64.b64encode(b"%PDF-1.4").decode()}
    model = SendEmail(
        transactional_message_id="welcome",
        to="Ada <ada@example.com>",
        identifiers={"email": "ada@example.com"},
        message_data={"name": "Ada"},
        from_="Team <team@example.com>",
        subject="Hello",
        body="<p>Hi</p>",
        body_plain="Hi",
        cc="grace@example.com",
        bcc="alan@example.com",
        reply_to="help@example.com",
        headers={"X-Campaign": "spring"},
        attachments=attachments,
        send_at=send_at,
        disable_message_retention=True,
        send_to_unsubscribed=False,
        tracked=True,
        queue_draft=False,
        language="fr",
    )

    # WHEN it is turned into Customer.io's JSON
    wire = model.wire()

    # THEN every field is there under Customer.io's name ("from", not "from_")
    assert wire == {
        "transactional_message_id": "welcome",
        "to": "Ada <ada@example.com>",
        "identifiers": {"email": "ada@example.com"},
        "message_data": {"name": "Ada"},
        "from": "Team <team@example.com>",
        "subject": "Hello",
        "body": "<p>Hi</p>",
        "body_plain": "Hi",
        "cc": "grace@example.com",
        "bcc": "alan@example.com",
        "reply_to": "help@example.com",
        "headers": {"X-Campaign": "spring"},
        "attachments": attachments,
        "send_at": send_at,
        "disable_message_retention": True,
        "send_to_unsubscribed": False,
        "tracked": True,
        "queue_draft": False,
        "language": "fr",
    }


def test_send_email_wire_keeps_unknown_fields_and_omits_unset_ones() -> None:
    # GIVEN a JSON body with a field the model does not declare
    body = email(preheader="Spring news", fake_bcc=False)

    # WHEN it round-trips through the model
    wire = SendEmail.model_validate(body).wire()

    # THEN it is unchanged: nothing dropped, no nulls added
    assert wire == body


def test_send_email_result_reads_customerio_answer() -> None:
    result = SendEmailResult.model_validate({"delivery_id": "d-1", "queued_at": 1700000000})
    assert (result.delivery_id, result.queued_at) == ("d-1", 1700000000)


def test_describe_reports_field_and_message() -> None:
    # GIVEN a pydantic error for a nested field / WHEN described / THEN dotted path and message
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate(email(message_data="not an object"))
    field, message = describe(caught.value.errors()[0])
    assert field == "message_data"
    assert message


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (Identify, {"userId": "   "}, "userId"),
        (Track, {"userId": "u-1", "event": " \t"}, "event"),
    ],
)
def test_blank_ids_and_event_names_are_refused_naming_the_field(
    model: type[Identify] | type[Track], body: dict[str, Any], field: str
) -> None:
    # GIVEN a call whose id or event name is only whitespace (Customer.io refuses those)
    # WHEN it is validated
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)

    # THEN it is refused before any request, naming the field
    assert invalid_request(raised.value).field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"transactional_message_id": True}, "transactional_message_id"),
        ({"transactional_message_id": 7.0}, "transactional_message_id"),
        ({"tracked": "yes"}, "tracked"),
        ({"send_to_unsubscribed": 1}, "send_to_unsubscribed"),
        ({"disable_message_retention": "false"}, "disable_message_retention"),
        ({"send_at": "1700000000"}, "send_at"),
        ({"identifiers": {"id": True}}, "identifiers.id"),
    ],
)
def test_send_email_keeps_json_types_strict_and_names_the_field(fields: dict[str, Any], field: str) -> None:
    # GIVEN a JSON value of the wrong type where Customer.io has a type (true is not template 1)
    # WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        SendEmail.model_validate_json(json.dumps(email(**fields)))

    # THEN it is refused naming the field
    assert field_of(caught.value) == field


def test_send_result_is_lenient_with_any_2xx_body() -> None:
    # GIVEN answers a proxy or a future Customer.io could give
    # THEN each is a result, keeping what it can read
    assert SendEmailResult.lenient({}).delivery_id is None
    assert SendEmailResult.lenient([1, 2]).queued_at is None
    assert SendEmailResult.lenient({"delivery_id": "d", "queued_at": 1.5}).queued_at == 1.5
    assert SendEmailResult.lenient({"queued_at": "soon"}).queued_at is None


def test_an_empty_identifier_is_named_as_empty_not_as_missing_items() -> None:
    # GIVEN a call whose userId is the empty string / WHEN it is validated
    with pytest.raises(ValidationError) as caught:
        Track.model_validate({"type": "track", "userId": "", "event": "signed_up"})

    # THEN the message a caller reads says the string is empty, naming the field
    field, message = describe(caught.value.errors()[0])
    assert field == "userId"
    assert message == "must not be empty (at least 1 character)"
