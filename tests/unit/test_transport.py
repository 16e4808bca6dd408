"""The transport against the fake Customer.io: headers, each error class, timeouts, dropped connections."""

from __future__ import annotations

import email.utils
import json
import re
import socket
import time

import pytest
from cio_relay import USER_AGENT, __version__
from cio_relay.cio import build_customerio
from cio_relay.cio.transport import Response, Transport, error_message, parse_retry_after
from cio_relay.errors import (
    AuthRejected,
    Classification,
    ConnectionDropped,
    CustomerIOError,
    CustomerIOTimeout,
    Permanent,
    RateLimited,
    Retryable,
)
from cio_relay.settings import load_settings
from urllib3.exceptions import ReadTimeoutError

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, PIPELINES_KEY

IDENTIFY = json.dumps({"type": "identify", "userId": "u1", "messageId": "m-1"}).encode()


@pytest.fixture
def transport() -> Transport:
    return Transport(connect_timeout=1, read_timeout=2)


def identify(transport: Transport, fake: FakeCustomerIO, url: str | None = None) -> Response:
    return transport.request(
        "POST",
        f"{url or fake.pipelines_url}/v1/identify",
        what="POST /v1/identify",
        headers={"Authorization": fake.pipelines_auth_header(), "X-Strict-Mode": "1"},
        body=IDENTIFY,
    )


def segments(transport: Transport, fake: FakeCustomerIO) -> Response:
    return transport.request(
        "GET",
        f"{fake.app_url}/v1/segments",
        what="GET /v1/segments",
        headers={"Authorization": fake.app_auth_header()},
    )


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- what goes on the wire ------------------------------------------------------------------------


def test_transport_post_sends_user_agent_accept_content_type_and_body(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN the fake Customer.io
    # WHEN a JSON body is posted
    response = identify(transport, fake_cio)

    # THEN the request carries cio-relay's User-Agent, JSON headers, the caller's headers and the exact body
    (received,) = fake_cio.requests
    assert received.method == "POST"
    assert received.path == "/v1/identify"
    assert received.headers["user-agent"] == f"cio-relay/{__version__}" == USER_AGENT
    assert re.fullmatch(r"cio-relay/\d+\.\d+\.\d+", received.headers["user-agent"])
    assert received.headers["content-type"] == "application/json"
    assert received.headers["accept"] == "application/json"
    assert received.headers["x-strict-mode"] == "1"
    assert received.body == IDENTIFY
    # AND the 2xx answer comes back as a Response
    assert response.status == 200
    assert response.json() == {}
    assert response.elapsed >= 0


def test_transport_get_sends_no_body_and_no_content_type(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # WHEN a GET is made
    response = segments(transport, fake_cio)

    # THEN no body and no Content-Type go out, and the JSON answer is readable
    (received,) = fake_cio.requests
    assert received.method == "GET"
    assert received.body == b""
    assert "content-type" not in received.headers
    assert received.headers["user-agent"] == USER_AGENT
    assert [s["id"] for s in response.json()["segments"]] == [1, 2]


# --- every error class ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "classification"),
    [
        (408, Retryable, Classification.RETRYABLE),
        (500, Retryable, Classification.RETRYABLE),
        (502, Retryable, Classification.RETRYABLE),
        (503, Retryable, Classification.RETRYABLE),
        (504, Retryable, Classification.RETRYABLE),
        (401, AuthRejected, Classification.AUTH),
        (403, AuthRejected, Classification.AUTH),
        (400, Permanent, Classification.PERMANENT),
        (404, Permanent, Classification.PERMANENT),
        (413, Permanent, Classification.PERMANENT),
        (422, Permanent, Classification.PERMANENT),
    ],
)
def test_transport_status_becomes_typed_error(
    transport: Transport,
    fake_cio: FakeCustomerIO,
    status: int,
    error_class: type[CustomerIOError],
    classification: Classification,
) -> None:
    # GIVEN Customer.io answers with an error status
    fake_cio.fail("/v1/identify", Fault(status=status))

    # WHEN a call is made
    with pytest.raises(CustomerIOError) as caught:
        identify(transport, fake_cio)

    # THEN the error has the class the delivery policy needs, the status and what was attempted
    error = caught.value
    assert type(error) is error_class
    assert error.classification is classification
    assert error.status == status
    assert error.retry_after is None
    assert str(error).startswith(f"POST /v1/identify: Customer.io answered {status}: ")
    # AND the client did not try again on its own (backoff belongs to SQS)
    assert fake_cio.request_count == 1


def test_transport_429_without_retry_after_is_rate_limited(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a 429 with no Retry-After (Customer.io documents none)
    fake_cio.fail("/v1/segments", Fault.rate_limited())

    # WHEN a call is made
    with pytest.raises(RateLimited) as caught:
        segments(transport, fake_cio)

    # THEN it is RateLimited (retryable), with Customer.io's message, waiting the window the body names
    assert caught.value.status == 429
    assert caught.value.retry_after == 1.0
    assert caught.value.classification is Classification.RETRYABLE
    assert "rate limited to 10 requests per 1s" in str(caught.value)


def test_transport_429_with_retry_after_seconds(transport: Transport, fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail("/v1/segments", Fault.rate_limited("7"))

    with pytest.raises(RateLimited) as caught:
        segments(transport, fake_cio)

    assert caught.value.retry_after == 7.0


def test_transport_429_with_retry_after_http_date(transport: Transport, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a Retry-After given as an HTTP date 30 s from now
    fake_cio.fail("/v1/segments", Fault.rate_limited(email.utils.formatdate(time.time() + 30, usegmt=True)))

    # WHEN a call is made
    with pytest.raises(RateLimited) as caught:
        segments(transport, fake_cio)

    # THEN retry_after is the seconds until then (HTTP dates have whole seconds)
    assert caught.value.retry_after is not None
    assert 27 <= caught.value.retry_after <= 30


def test_transport_503_with_retry_after_keeps_it(transport: Transport, fake_cio: FakeCustomerIO) -> None:
    fake_cio.fail("/v1/segments", Fault(status=503, retry_after="12"))

    with pytest.raises(Retryable) as caught:
        segments(transport, fake_cio)

    assert type(caught.value) is Retryable
    assert (caught.value.status, caught.value.retry_after) == (503, 12.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"meta": {"error": "name cannot be blank"}}, "name cannot be blank"),
        (
            {"meta": {"errors": ["userId is required", "event is required"]}},
            "userId is required; event is required",
        ),
        ({"meta": {"errors": [{"message": "from domain not verified"}]}}, "from domain not verified"),
        ({"code": "bad", "message": "something"}, "something"),
    ],
)
def test_transport_error_carries_customerio_message(
    transport: Transport, fake_cio: FakeCustomerIO, body: dict[str, object], message: str
) -> None:
    # GIVEN a 400 with one of Customer.io's error bodies
    fake_cio.fail("/v1/identify", Fault(status=400, body=body))

    # WHEN a call is made
    with pytest.raises(Permanent) as caught:
        identify(transport, fake_cio)

    # THEN the error carries Customer.io's own words
    assert caught.value.message == f"POST /v1/identify: Customer.io answered 400: {message}"


def test_transport_strict_mode_rejection_carries_the_fakes_validation_errors(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN an invalid identify sent with X-Strict-Mode: 1 (raw, past any client-side check)
    # WHEN it is sent
    with pytest.raises(Permanent) as caught:
        transport.request(
            "POST",
            f"{fake_cio.pipelines_url}/v1/identify",
            what="POST /v1/identify",
            headers={"Authorization": fake_cio.pipelines_auth_header(), "X-Strict-Mode": "1"},
            body=b'{"traits":{}}',
        )

    # THEN Customer.io's 400 {"meta":{"errors":[...]}} becomes Permanent with that message
    assert caught.value.status == 400
    assert "userId or anonymousId is required" in str(caught.value)


# --- timeouts and connections ------------------------------------------------------------------------


def test_transport_read_timeout_from_settings_is_customerio_timeout(
    fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN CUSTOMERIO_READ_TIMEOUT=0.2 and a Customer.io that takes 1.5 s to answer
    settings = load_settings(
        {
            "CUSTOMERIO_READ_TIMEOUT": "0.2",
            "CUSTOMERIO_APP_URL": fake_cio.app_url,
            "CUSTOMERIO_APP_TOKEN": APP_KEY,
        }
    )
    client = build_customerio(settings)
    fake_cio.fail("/v1/segments", Fault.slow(1.5))

    # WHEN a call is made
    started = time.monotonic()
    with pytest.raises(CustomerIOTimeout) as caught:
        client.app.list_segments()

    # THEN it gives up after the read timeout, as a retryable timeout without a status
    assert time.monotonic() - started < 1.2
    assert caught.value.status is None
    assert caught.value.classification is Classification.RETRYABLE
    assert isinstance(caught.value.__cause__, ReadTimeoutError)
    # AND it is not sent again (Customer.io may have acted on it)
    assert fake_cio.request_count == 1


def test_transport_refused_connection_is_retryable(transport: Transport) -> None:
    # GIVEN nothing listens on the port
    url = f"http://127.0.0.1:{closed_port()}"

    # WHEN a call is made
    with pytest.raises(Retryable) as caught:
        transport.request("GET", f"{url}/v1/segments", what="GET /v1/segments", headers={})

    # THEN it is a plain retryable error without a status (not a timeout)
    assert type(caught.value) is Retryable
    assert caught.value.status is None
    assert "cannot reach Customer.io" in str(caught.value)


def test_transport_connection_dropped_once_is_retried_on_a_fresh_connection(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN Customer.io drops the connection without answering, once
    fake_cio.fail("/v1/identify", Fault.dropped())

    # WHEN a call is made
    response = identify(transport, fake_cio)

    # THEN the transport's one retry succeeds, sending the very same request again
    assert response.status == 200
    first, second = fake_cio.requests
    assert (first.fault, first.status) == ("drop", None)
    assert (second.fault, second.status) == (None, 200)
    assert first.body == second.body == IDENTIFY
    assert first.headers == second.headers


def test_transport_connection_dropped_twice_is_retryable(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN Customer.io drops the connection twice in a row
    fake_cio.fail("/v1/identify", Fault.dropped(), Fault.dropped())

    # WHEN a call is made
    with pytest.raises(Retryable) as caught:
        identify(transport, fake_cio)

    # THEN the transport gives up after one retry: Retryable without a status
    assert type(caught.value) is ConnectionDropped  # a Retryable whose request may have been acted on
    assert caught.value.status is None
    assert "connection dropped" in str(caught.value)
    assert fake_cio.request_count == 2


def test_transport_stale_keep_alive_connection_does_not_fail_a_call(
    transport: Transport, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a call left a keep-alive connection in the pool
    identify(transport, fake_cio)
    # AND Customer.io then closed every idle connection (a restart on the same port)
    port = fake_cio.pipelines_port
    fake_cio.stop()
    fake_cio.start()
    assert fake_cio.pipelines_port == port

    # WHEN the next calls are made through the same transport
    responses = [identify(transport, fake_cio), segments(transport, fake_cio)]

    # THEN they succeed
    assert [r.status for r in responses] == [200, 200]
    assert [r.status for r in fake_cio.requests] == [200, 200, 200]


def test_transport_keep_alive_survives_many_calls(transport: Transport, fake_cio: FakeCustomerIO) -> None:
    # GIVEN one transport (one pool) / WHEN many calls are made in a row / THEN every one succeeds
    for _ in range(50):
        identify(transport, fake_cio)
    assert fake_cio.request_count == 50
    assert len(fake_cio.pipelines_calls()) == 50


# --- helpers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("120", 120.0), (" 5 ", 5.0), ("soon", None), ("-3", None)],
)
def test_parse_retry_after_reads_delta_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_reads_http_dates_and_clamps_the_past() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_error_message_of_non_json_and_empty_bodies() -> None:
    assert error_message(b"Bad Gateway") == "Bad Gateway"
    assert error_message(b"") == "(empty body)"
    assert len(error_message(b"x" * 10_000)) == 500


def test_transport_errors_never_carry_credentials(transport: Transport, fake_cio: FakeCustomerIO) -> None:
    # GIVEN Customer.io rejects the credentials
    fake_cio.fail("/v1/identify", Fault(status=401))

    # WHEN a call is made
    with pytest.raises(AuthRejected) as caught:
        identify(transport, fake_cio)

    # THEN neither the key nor the Authorization header appears in the error
    text = f"{caught.value!s} {caught.value!r} {caught.value.message}"
    assert PIPELINES_KEY not in text
    assert fake_cio.pipelines_auth_header().split()[1] not in text
    assert APP_KEY not in text
