"""AppClient against the fake Customer.io: send_email, search_people (+ every page), list_segments."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cio_relay import USER_AGENT
from cio_relay.cio import build_customerio
from cio_relay.cio.app_api import AppClient
from cio_relay.errors import AuthRejected, InvalidRequest, PayloadTooLarge, Permanent, RateLimited
from cio_relay.models.email import MAX_ATTACHMENTS_BYTES, SendEmail, SendEmailResult
from cio_relay.settings import load_settings

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, PIPELINES_KEY

DAY = 24 * 3600
FILTER = {"and": [{"attribute": {"field": "plan", "operator": "eq", "value": "pro"}}]}


@pytest.fixture
def app(fake_cio: FakeCustomerIO) -> AppClient:
    settings = load_settings(
        {
            "CUSTOMERIO_PIPELINES_URL": fake_cio.pipelines_url,
            "CUSTOMERIO_APP_URL": fake_cio.app_url,
            "CUSTOMERIO_PIPELINES_API_KEY": PIPELINES_KEY,
            "CUSTOMERIO_APP_TOKEN": APP_KEY,
        }
    )
    return build_customerio(settings).app


def full_email() -> dict[str, Any]:
    """A send with every field docs/design.md lists, as Customer.io takes it."""
    return {
        "transactional_message_id": 42,
        "to": '"Ada Lovelace" <ada@example.com>',
        "identifiers": {"id": "user-1"},
        "message_data": {"first_name": "Ada", "items": [{"sku": "A1", "qty": 2}]},
        "from": "Team <team@example.com>",
        "subject": "Your order",
        "body": "<p>Thanks {{ first_name }}</p>",
        "body_plain": "Thanks",
        "cc": "grace@example.com",
        "bcc": "audit@example.com",
        "reply_to": "help@example.com",
        "headers": {"X-Order": "1001"},
        "attachments": {"receipt.txt": base64.b64encode(b"total: 10 EUR").decode()},
        "send_at": int(time.time()) + DAY,
        "disable_message_retention": False,
        "send_to_unsubscribed": True,
        "tracked": True,
        "queue_draft": False,
        "language": "de",
    }


def assert_app_headers(headers: dict[str, str]) -> None:
    assert headers["authorization"] == f"Bearer {APP_KEY}"
    assert headers["user-agent"] == USER_AGENT
    assert "x-strict-mode" not in headers  # a Pipelines header only


# --- send_email -------------------------------------------------------------------------------------


def test_send_email_wire_format_and_result(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a send with every field, built as the model (from_ attribute for "from")
    body = full_email()
    request = SendEmail.model_validate(body)

    # WHEN it is sent
    result = app.send_email(request)

    # THEN one POST /v1/send/email with Bearer auth carries every field, "from" included
    (received,) = fake_cio.requests
    assert (received.method, received.path, received.query) == ("POST", "/v1/send/email", {})
    assert_app_headers(received.headers)
    assert received.headers["content-type"] == "application/json"
    assert received.json == body
    # AND the answer is Customer.io's delivery id and queue time
    (sent,) = fake_cio.emails
    assert isinstance(result, SendEmailResult)
    assert result.delivery_id == sent["delivery_id"]
    assert result.queued_at == sent["queued_at"]
    assert abs(sent["queued_at"] - time.time()) < 5


def test_send_email_dict_is_sent_exactly_as_given(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN an EmailQueue body: Customer.io's JSON, with a field the model does not declare
    body = {**full_email(), "preheader": "Order 1001", "identifiers": {"id": 7}}

    # WHEN it is sent
    app.send_email(body)

    # THEN Customer.io receives exactly that JSON (no renaming, no coercion, nothing dropped)
    assert fake_cio.requests[0].json == body


def test_send_email_with_own_content_is_sent(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a send with its own content instead of a template
    body = {
        "to": "ada@example.com",
        "identifiers": {"email": "ada@example.com"},
        "from": "team@example.com",
        "subject": "Hi",
        "body": "<p>Hi</p>",
    }

    # WHEN / THEN it is sent and accepted
    assert app.send_email(body).delivery_id
    assert fake_cio.emails[0]["json"] == body


def recipients(n: int) -> str:
    return ", ".join(f'"Person, {i}" <p{i}@example.com>' for i in range(n))


@pytest.mark.parametrize(
    ("changes", "field", "error_class"),
    [
        ({"identifiers": {}}, "identifiers", InvalidRequest),
        ({"identifiers": {"id": "u1", "email": "ada@example.com"}}, "identifiers", InvalidRequest),
        ({"to": recipients(10), "cc": recipients(5), "bcc": "x@example.com"}, "to", InvalidRequest),
        ({"attachments": {"a.pdf": "%%% not base64 %%%"}}, "attachments", InvalidRequest),
        (
            {"attachments": {"big.bin": base64.b64encode(b"x" * (MAX_ATTACHMENTS_BYTES // 4 * 3)).decode()}},
            "attachments",
            PayloadTooLarge,
        ),
        ({"send_at": int(time.time()) + 91 * DAY}, "send_at", InvalidRequest),
        ({"transactional_message_id": None, "from": None}, "transactional_message_id", InvalidRequest),
        ({"transactional_message_id": None, "subject": None}, "transactional_message_id", InvalidRequest),
        ({"transactional_message_id": None, "body": None}, "transactional_message_id", InvalidRequest),
    ],
)
def test_send_email_invalid_is_rejected_before_any_request(
    app: AppClient,
    fake_cio: FakeCustomerIO,
    changes: dict[str, Any],
    field: str,
    error_class: type[InvalidRequest],
) -> None:
    # GIVEN a send that breaks one rule
    body = {k: v for k, v in {**full_email(), **changes}.items() if v is not None}

    # WHEN the client is asked to send it
    with pytest.raises(InvalidRequest) as caught:
        app.send_email(body)

    # THEN it refuses, naming the field, and Customer.io received nothing
    assert type(caught.value) is error_class
    assert caught.value.field == field
    assert fake_cio.requests == []


def test_send_email_unknown_template_is_permanent() -> None:
    # GIVEN Customer.io does not know the template
    with FakeCustomerIO(pipelines_api_key=PIPELINES_KEY, app_api_key=APP_KEY, known_templates=[1]) as fake:
        settings = load_settings({"CUSTOMERIO_APP_URL": fake.app_url, "CUSTOMERIO_APP_TOKEN": APP_KEY})
        app = build_customerio(settings).app

        # WHEN a send names another one
        with pytest.raises(Permanent) as caught:
            app.send_email(full_email())

        # THEN Customer.io's 400 comes back as Permanent with its message
        assert caught.value.status == 400
        assert "transactional_message_id not found" in str(caught.value)


# --- search_people / iter_people ----------------------------------------------------------------------


def test_search_people_wire_format(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN three people at Customer.io, and the cursor Customer.io gave after the first
    cursor = app.search_people(FILTER, limit=1)["next"]

    # WHEN one page is searched with start and limit
    page = app.search_people(FILTER, start=cursor, limit=2)

    # THEN POST /v1/customers?start=<cursor>&limit=2 carries {"filter": ...} with Bearer auth
    received = fake_cio.requests[1]
    assert (received.method, received.path) == ("POST", "/v1/customers")
    assert received.query == {"start": cursor, "limit": "2"}
    assert_app_headers(received.headers)
    assert received.json == {"filter": FILTER}
    # AND the page comes back as Customer.io sent it
    assert page["ids"] == ["user-2", "user-3"]
    assert [p["email"] for p in page["identifiers"]] == ["grace@example.com", "alan@example.com"]
    assert page["next"] == ""


def test_search_people_without_paging_sends_no_query(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    app.search_people(FILTER)
    assert fake_cio.requests[0].query == {}


@pytest.mark.parametrize("limit", [0, 1001, -1])
def test_search_people_limit_out_of_range_is_rejected_before_any_request(
    app: AppClient, fake_cio: FakeCustomerIO, limit: int
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        app.search_people(FILTER, limit=limit)
    assert caught.value.field == "limit"
    assert fake_cio.requests == []


def test_iter_people_walks_every_page(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN seven people and pages of three
    fake_cio.people = [
        {"id": f"user-{i}", "email": f"p{i}@example.com", "cio_id": f"c{i}", "attributes": {"plan": "pro"}}
        for i in range(7)
    ]

    # WHEN every person is iterated
    people = list(app.iter_people(FILTER, page_size=3))

    # THEN all seven come back in order, from three requests following `next` as `start`
    assert [p["id"] for p in people] == [f"user-{i}" for i in range(7)]
    assert people[0] == {"id": "user-0", "email": "p0@example.com", "cio_id": "c0"}
    queries = [r.query for r in fake_cio.requests]
    assert [q["limit"] for q in queries] == ["3", "3", "3"]
    assert "start" not in queries[0]
    assert queries[1]["start"]
    assert queries[2]["start"]
    assert queries[1]["start"] != queries[2]["start"]
    assert all(r.json == {"filter": FILTER} for r in fake_cio.requests)


def test_iter_people_default_page_size_is_the_maximum(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    assert len(list(app.iter_people(FILTER))) == 3
    assert [r.query for r in fake_cio.requests] == [{"limit": "1000"}]


def test_iter_people_is_lazy(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN pages of one / WHEN only the first person is taken / THEN only one page was fetched
    first = next(iter(app.iter_people(FILTER, page_size=1)))
    assert first["id"] == "user-1"
    assert fake_cio.request_count == 1


# --- list_segments -----------------------------------------------------------------------------------


def test_list_segments_wire_format(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # WHEN the segments are listed
    answer = app.list_segments()

    # THEN one GET /v1/segments without a body, with Bearer auth
    (received,) = fake_cio.requests
    assert (received.method, received.path, received.query, received.body) == ("GET", "/v1/segments", {}, b"")
    assert_app_headers(received.headers)
    # AND Customer.io's answer comes back unchanged
    assert answer == {"segments": fake_cio.segments}


def test_app_errors_carry_customerio_message(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN Customer.io answers 404 with {"meta": {"error": ...}}
    fake_cio.fail("/v1/segments", Fault(status=404, body={"meta": {"error": "workspace not found"}}))

    # WHEN the segments are listed
    with pytest.raises(Permanent) as caught:
        app.list_segments()

    # THEN the error carries status and message
    assert caught.value.status == 404
    assert caught.value.message == "GET /v1/segments: Customer.io answered 404: workspace not found"


# --- Customer.io's answers per endpoint -------------------------------------------------------------

EXE = {"setup.exe": base64.b64encode(b"MZ").decode()}


def test_send_email_403_with_attachments_is_a_refused_file_type_not_an_auth_failure(
    app: AppClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN Customer.io answers 403 "Forbidden file type" to an email with an attachment
    fake_cio.fail("/v1/send/email", Fault(status=403, body={"meta": {"error": "Forbidden file type"}}))

    # WHEN it is sent
    with pytest.raises(Permanent) as caught:
        app.send_email({**full_email(), "attachments": EXE})

    # THEN it is permanent with Customer.io's reason, after one request (no secret re-read and retry)
    assert caught.value.status == 403
    assert caught.value.code == "customerio_attachment_refused"
    assert "Forbidden file type" in caught.value.message
    assert len(fake_cio.requests) == 1


def test_send_email_403_without_attachments_stays_an_auth_failure(
    app: AppClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN Customer.io answers 403 twice to an email without attachments
    fake_cio.fail("/v1/send/email", Fault(status=403), Fault(status=403))
    body = {k: v for k, v in full_email().items() if k != "attachments"}

    # WHEN it is sent / THEN it is an auth failure, retried once after re-reading the credentials
    with pytest.raises(AuthRejected):
        app.send_email(body)
    assert len(fake_cio.requests) == 2


def test_send_email_413_is_permanent_too_large(app: AppClient, fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail(
        "/v1/send/email",
        Fault(status=413, body={"meta": {"error": "Total attachment size exceeds the limit"}}),
    )
    with pytest.raises(Permanent) as caught:
        app.send_email(full_email())
    assert caught.value.status == 413
    assert "attachment size" in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "delivery_id"),
    [
        (202, {}, None),
        (200, {"delivery_id": "d-1", "queued_at": 1700000000.25, "extra": [1]}, "d-1"),
        (201, {"delivery_id": 42}, "42"),
    ],
    ids=["proxy-202-empty", "float-queued-at-and-extra", "numeric-id"],
)
def test_any_2xx_from_a_send_is_a_send(
    status: int, body: dict[str, Any], delivery_id: str | None, app: AppClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a 2xx whose body is not the documented one
    fake_cio.fail("/v1/send/email", Fault(status=status, body=body))

    # WHEN it is sent / THEN it is a result, not an error
    result = app.send_email(full_email())
    assert result.delivery_id == delivery_id
    assert len(fake_cio.requests) == 1


@pytest.mark.parametrize(("retry_after", "seconds"), [("7", 7.0), (None, 1.0)])
def test_app_api_429_reads_retry_after_and_the_errors_body(
    retry_after: str | None, seconds: float, app: AppClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN the App API's 429 body, with and without Retry-After
    body = {"errors": [{"detail": "rate limited to 10 requests per 1s (reference abc)", "status": "429"}]}
    fake_cio.fail("/v1/segments", Fault(status=429, retry_after=retry_after, body=body))

    # WHEN a call is made
    with pytest.raises(RateLimited) as caught:
        app.list_segments()

    # THEN the wait is Retry-After, else the window the detail names; the reason is the detail
    assert caught.value.retry_after == seconds
    assert "rate limited to 10 requests per 1s" in caught.value.message


@pytest.mark.parametrize(("channel", "path"), [("push", "/v1/send/push"), ("sms", "/v1/send/sms")])
def test_push_and_sms_go_to_their_endpoints(
    channel: str, path: str, app: AppClient, fake_cio: FakeCustomerIO
) -> None:
    from cio_relay.transactional import model_for  # noqa: PLC0415 - built on first use

    body = {"transactional_message_id": 3, "identifiers": {"id": "u-1"}, "to": "+14155550123"}
    result = app.send(channel, model_for(channel).model_validate(body))
    [sent] = fake_cio.messages
    assert (sent["path"], sent["json"], result.delivery_id) == (path, body, sent["delivery_id"])
