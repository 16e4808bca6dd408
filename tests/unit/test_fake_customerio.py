"""Unit tests for the fake Customer.io server (local_stack/customerio.py) with plain http.client/urllib3."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3

from local_stack.customerio import CHAOS_KINDS, FakeCustomerIO, Fault, RecordedRequest

PIPELINES_KEY = "pk-test-pipelines"
APP_KEY = "app-test-key"


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SITE_ID = "test-site-id"
TRACK_KEY = "test-track-key"
PIPELINES_AUTH = basic(PIPELINES_KEY)
APP_AUTH = f"Bearer {APP_KEY}"
TRACK_AUTH = basic(SITE_ID, TRACK_KEY)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes


def api_of(path: str) -> str:
    """The listener a path belongs to: Track /api/..., App send/customers/segments, else Pipelines."""
    if path.startswith("/api/"):
        return "track"
    if path.startswith(("/v1/send/", "/v1/customers", "/v1/segments")):
        return "app"
    return "pipelines"


def send(
    fake: FakeCustomerIO,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 5.0,
    api: str | None = None,
) -> Reply:
    """One request with http.client (a fresh connection unless ``conn`` is given) to ``path``'s listener."""
    port = fake.port_of(api or api_of(path))
    connection = conn or http.client.HTTPConnection(fake.host, port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        payload = response.read()
        return Reply(
            status=response.status,
            headers={key.lower(): value for key, value in response.getheaders()},
            body=json.loads(payload) if payload else None,
            raw=payload,
        )
    finally:
        if conn is None:
            connection.close()


def pipelines(
    fake: FakeCustomerIO,
    path: str,
    payload: Any = None,
    *,
    strict: bool = True,
    auth: str | None = PIPELINES_AUTH,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    all_headers: dict[str, str] = dict(headers or {})
    if auth is not None:
        all_headers["Authorization"] = auth
    if strict:
        all_headers["X-Strict-Mode"] = "1"
    return send(fake, "POST", path, payload, headers=all_headers, raw=raw, conn=conn)


def app(
    fake: FakeCustomerIO,
    method: str,
    path: str,
    payload: Any = None,
    *,
    auth: str | None = APP_AUTH,
    raw: bytes | None = None,
) -> Reply:
    headers = {"Authorization": auth} if auth is not None else {}
    return send(fake, method, path, payload, headers=headers, raw=raw)


def valid_email(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "transactional_message_id": 42,
        "identifiers": {"id": "user-1"},
        "to": "ada@example.com",
        "message_data": {"name": "Ada"},
    }
    payload.update(overrides)
    return payload


def raw_exchange(fake: FakeCustomerIO, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes on a socket and return whatever the server answers before closing."""
    with socket.create_connection((fake.host, fake.pipelines_port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def fake() -> Iterator[FakeCustomerIO]:
    with FakeCustomerIO() as server:
        yield server


# --- lifecycle ---------------------------------------------------------------------------------------


def test_start_binds_one_ephemeral_port_per_api_on_localhost_and_stop_releases_them() -> None:
    # GIVEN a fake that was never started
    server = FakeCustomerIO()
    assert not server.running

    # WHEN it starts (as a context manager)
    with server as started:
        # THEN each API has its own listener on 127.0.0.1, and the relay's overrides point at them
        assert started is server
        assert server.running
        ports = {server.pipelines_port, server.app_port, server.track_port}
        assert len(ports) == 3
        assert server.pipelines_url == f"http://127.0.0.1:{server.pipelines_port}"
        assert server.app_url == f"http://127.0.0.1:{server.app_port}"
        assert server.track_url == f"http://127.0.0.1:{server.track_port}"
        assert server.environment() == {
            "CUSTOMERIO_PIPELINES_URL": server.pipelines_url,
            "CUSTOMERIO_APP_URL": server.app_url,
            "CUSTOMERIO_TRACK_URL": server.track_url,
        }
        assert not hasattr(server, "url")
        assert pipelines(server, "/v1/identify", {"userId": "u1"}).status == 200

    # THEN after the block it is stopped
    assert not server.running


@pytest.mark.parametrize(
    ("path", "api", "auth"),
    [
        ("/v1/identify", "app", PIPELINES_AUTH),
        ("/v1/batch", "track", PIPELINES_AUTH),
        ("/v1/send/email", "pipelines", APP_AUTH),
        ("/v1/customers", "track", APP_AUTH),
        ("/api/v2/batch", "pipelines", TRACK_AUTH),
        ("/api/v1/customers/u1", "app", TRACK_AUTH),
    ],
)
def test_a_call_sent_to_another_apis_listener_is_404_and_never_accepted(
    fake: FakeCustomerIO, path: str, api: str, auth: str
) -> None:
    # GIVEN a valid call with the right credentials for its API
    # WHEN it is sent to the base URL of another API (a swapped CUSTOMERIO_*_URL)
    reply = send(fake, "POST", path, {"userId": "u1"}, headers={"Authorization": auth}, api=api)

    # THEN that listener does not know the path, and nothing was delivered anywhere
    assert reply.status == 404
    assert [(r.api, r.status) for r in fake.requests] == [(api, 404)]
    assert fake.pipelines_calls() == []
    assert fake.track_calls() == []
    assert fake.emails == []


def test_stop_cuts_keep_alive_connections_and_start_again_reuses_the_ports() -> None:
    # GIVEN a running fake and a client holding a keep-alive connection to it
    server = FakeCustomerIO().start()
    ports = (server.pipelines_port, server.app_port, server.track_port)
    conn = http.client.HTTPConnection(server.host, server.pipelines_port, timeout=2)
    assert pipelines(server, "/v1/identify", {"userId": "u1"}, conn=conn).status == 200

    # WHEN the fake stops
    server.stop()

    # THEN the idle connection is no longer served
    with pytest.raises((OSError, http.client.HTTPException)):
        pipelines(server, "/v1/identify", {"userId": "u1"}, conn=conn)
    conn.close()

    # WHEN it starts again
    server.start()
    try:
        # THEN it listens on the same ports and answers
        assert (server.pipelines_port, server.app_port, server.track_port) == ports
        assert pipelines(server, "/v1/identify", {"userId": "u1"}).status == 200
    finally:
        server.stop()


# --- Pipelines auth ----------------------------------------------------------------------------------


def test_pipelines_accepts_basic_auth_with_the_api_key_and_an_empty_password(fake: FakeCustomerIO) -> None:
    # GIVEN the Pipelines key as Basic username with an empty password
    # WHEN an identify call is sent
    reply = pipelines(fake, "/v1/identify", {"userId": "u1"}, auth=basic(PIPELINES_KEY))

    # THEN it is accepted and recorded
    assert reply.status == 200
    assert reply.body == {}
    (record,) = fake.requests
    assert (record.api, record.status) == ("pipelines", 200)
    assert record.headers["authorization"] == PIPELINES_AUTH
    assert fake.pipelines_auth_header() == PIPELINES_AUTH


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic("wrong-key"),
        basic(PIPELINES_KEY, "password"),
        f"Bearer {PIPELINES_KEY}",
        "Basic not-base64!!",
        TRACK_AUTH,
    ],
    ids=["missing", "wrong-key", "non-empty-password", "bearer", "garbage", "track-credentials"],
)
def test_pipelines_rejects_bad_credentials_with_401(fake: FakeCustomerIO, auth: str | None) -> None:
    # GIVEN a fake that knows a Pipelines key and a Track site id + key
    # WHEN a Pipelines call arrives with missing or wrong credentials (Track's are wrong here)
    reply = pipelines(fake, "/v1/identify", {"userId": "u1"}, auth=auth)

    # THEN it gets Customer.io's 401 body and nothing is accepted
    assert reply.status == 401
    assert reply.body == {"meta": {"errors": ["Unauthorized request"]}}
    assert [r.status for r in fake.requests] == [401]
    assert fake.pipelines_calls() == []


def test_pipelines_refuses_track_credentials_even_without_a_pipelines_key() -> None:
    # GIVEN a workspace with only Track credentials
    with FakeCustomerIO(pipelines_api_key=None, site_id="site-1", track_api_key="track-key") as server:
        # WHEN a Pipelines call presents them
        reply = pipelines(
            server, "/v1/track", {"userId": "u1", "event": "E"}, auth=basic("site-1", "track-key")
        )

        # THEN Pipelines answers 401, while the Track API takes the same credentials
        assert reply.status == 401
        assert server.pipelines_calls() == []
        assert server.track_auth_header() == basic("site-1", "track-key")
        with pytest.raises(RuntimeError, match="no Pipelines API key"):
            server.pipelines_auth_header()
        answer = send(
            server,
            "PUT",
            "/api/v1/customers/u1",
            {"plan": "pro"},
            headers={"Authorization": basic("site-1", "track-key")},
        )
        assert answer.status == 200


# --- strict vs permissive ----------------------------------------------------------------------------


def test_valid_call_without_strict_header_is_accepted_but_recorded_as_not_strict(
    fake: FakeCustomerIO,
) -> None:
    # GIVEN a valid identify call
    # WHEN it is sent without X-Strict-Mode
    reply = pipelines(fake, "/v1/identify", {"userId": "u1"}, strict=False)

    # THEN Customer.io answers 200 {} but the record shows the header was missing
    assert (reply.status, reply.body) == (200, {})
    (record,) = fake.requests
    assert record.strict is False
    assert record.dropped is False
    assert fake.pipelines_calls() == []
    assert fake.pipelines_calls(strict_only=False) == [{"userId": "u1", "type": "identify"}]


def test_invalid_call_without_strict_header_is_silently_dropped(fake: FakeCustomerIO) -> None:
    # GIVEN a track call without event and without any id
    # WHEN it is sent in permissive mode
    reply = pipelines(fake, "/v1/track", {"properties": {}}, strict=False)

    # THEN the answer is still 200 {} (like Customer.io) but the call is recorded as dropped
    assert (reply.status, reply.body) == (200, {})
    (record,) = fake.requests
    assert record.dropped is True
    assert record.strict is False
    assert record.error is not None
    assert "event is required" in record.error
    assert not record.accepted
    assert fake.pipelines_calls(strict_only=False) == []


def test_invalid_call_with_strict_header_gets_400(fake: FakeCustomerIO) -> None:
    # GIVEN the same invalid call
    # WHEN it is sent with X-Strict-Mode: 1
    reply = pipelines(fake, "/v1/track", {"properties": {}})

    # THEN it gets a 400 naming every missing field
    assert reply.status == 400
    assert reply.body == {"meta": {"errors": ["event is required", "userId or anonymousId is required"]}}
    (record,) = fake.requests
    assert (record.status, record.strict, record.dropped) == (400, True, False)


# --- validation rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/identify", {"userId": "u1", "traits": {"email": "ada@example.com"}}),
        ("/v1/identify", {"anonymousId": "anon-1"}),
        ("/v1/track", {"userId": "u1", "event": "Signed Up"}),
        ("/v1/track", {"anonymousId": "anon-1", "event": "Viewed"}),
        ("/v1/page", {"userId": "u1", "name": "Home"}),
        ("/v1/screen", {"anonymousId": "anon-1", "name": "Home"}),
        ("/v1/group", {"groupId": "g1", "userId": "u1"}),
        ("/v1/alias", {"previousId": "anon-1", "userId": "u1"}),
        ("/v1/identify", {"userId": 12345}),
    ],
)
def test_valid_single_calls_are_accepted(fake: FakeCustomerIO, path: str, payload: dict[str, Any]) -> None:
    # GIVEN a valid call for the endpoint
    # WHEN it is sent in strict mode
    reply = pipelines(fake, path, payload)

    # THEN it is accepted and recorded with its type taken from the path
    assert (reply.status, reply.body) == (200, {})
    assert fake.pipelines_calls() == [{**payload, "type": path.rsplit("/", 1)[1]}]


@pytest.mark.parametrize(
    ("path", "payload", "message"),
    [
        ("/v1/identify", {}, "userId or anonymousId is required"),
        ("/v1/identify", {"userId": "   "}, "userId or anonymousId is required"),
        ("/v1/identify", {"userId": True}, "userId or anonymousId is required"),
        ("/v1/page", {"name": "Home"}, "userId or anonymousId is required"),
        ("/v1/screen", {"name": "Home"}, "userId or anonymousId is required"),
        ("/v1/track", {"userId": "u1"}, "event is required"),
        ("/v1/track", {"userId": "u1", "event": ""}, "event is required"),
        ("/v1/track", {"event": "Signed Up"}, "userId or anonymousId is required"),
        ("/v1/group", {"userId": "u1"}, "groupId is required"),
        ("/v1/alias", {"userId": "u1"}, "previousId is required"),
        ("/v1/alias", {"previousId": "anon-1"}, "userId is required"),
        ("/v1/identify", ["not", "an", "object"], "body must be a JSON object"),
        ("/v1/batch", {}, "batch must be a non-empty list"),
        ("/v1/batch", {"batch": []}, "batch must be a non-empty list"),
        ("/v1/batch", {"batch": {"type": "identify"}}, "batch must be a non-empty list"),
        (
            "/v1/batch",
            {"batch": [{"type": "identify", "userId": "u1"}, "x"]},
            "batch[1] must be a JSON object",
        ),
        (
            "/v1/batch",
            {"batch": [{"type": "delete", "userId": "u1"}]},
            "batch[0].type must be one of alias, group, identify, page, screen, track",
        ),
        (
            "/v1/batch",
            {"batch": [{"userId": "u1"}]},
            "batch[0].type must be one of alias, group, identify, page, screen, track",
        ),
        (
            "/v1/batch",
            {
                "batch": [
                    {"type": "identify", "userId": "u1"},
                    {"type": "track", "userId": "u1", "event": "E"},
                    {"type": "page", "anonymousId": "a1"},
                    {"type": "identify", "traits": {"email": "ada@example.com"}},
                ]
            },
            "batch[3].userId or anonymousId is required",
        ),
        ("/v1/batch", {"batch": [{"type": "track", "userId": "u1"}]}, "batch[0].event is required"),
        ("/v1/batch", {"batch": [{"type": "group", "userId": "u1"}]}, "batch[0].groupId is required"),
        ("/v1/batch", {"batch": [{"type": "alias", "userId": "u1"}]}, "batch[0].previousId is required"),
    ],
)
def test_strict_validation_rules(fake: FakeCustomerIO, path: str, payload: Any, message: str) -> None:
    # GIVEN a payload that breaks one Customer.io rule
    # WHEN it is sent in strict mode
    reply = pipelines(fake, path, payload)

    # THEN it is rejected with a 400 naming the field, and nothing is accepted
    assert reply.status == 400
    assert reply.body == {"meta": {"errors": [message]}}
    (record,) = fake.requests
    assert (record.status, record.strict, record.error) == (400, True, message)
    assert fake.pipelines_calls() == []


def test_invalid_json_is_rejected_with_400(fake: FakeCustomerIO) -> None:
    # GIVEN bodies that are not JSON (garbage, broken UTF-8, absurd nesting, empty)
    bodies = [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000, b""]

    for body in bodies:
        # WHEN each is posted to a Pipelines endpoint, strict and permissive
        strict = pipelines(fake, "/v1/identify", raw=body)
        permissive = pipelines(fake, "/v1/identify", raw=body, strict=False)

        # THEN both get 400 invalid JSON
        assert (strict.status, strict.body) == (400, {"meta": {"error": "invalid JSON"}})
        assert (permissive.status, permissive.body) == (400, {"meta": {"error": "invalid JSON"}})

    # THEN every attempt was recorded with no parsed JSON
    assert [(r.status, r.json) for r in fake.requests] == [(400, None)] * (2 * len(bodies))


# --- size limits -------------------------------------------------------------------------------------


def padded_traits(total: int) -> dict[str, str]:
    """Traits within Journeys' limits (each value under 1000 bytes) adding up to about ``total`` bytes."""
    return {f"t{i:03d}": "x" * 900 for i in range(total // 900 + 1)}


def test_single_call_over_32_kb_gets_200_and_is_dropped_strict_or_not(fake: FakeCustomerIO) -> None:
    # GIVEN an identify call whose JSON is over 32768 bytes (every trait within Journeys' limits)
    payload = {"userId": "u1", "traits": padded_traits(33_000)}

    # WHEN it is sent strict and permissive
    strict = pipelines(fake, "/v1/identify", payload)
    permissive = pipelines(fake, "/v1/identify", payload, strict=False)

    # THEN both get Customer.io's 200 {} and neither goes through: a relay cannot rely on a 400
    assert [(r.status, r.body) for r in (strict, permissive)] == [(200, {})] * 2
    assert [r.dropped for r in fake.requests] == [True, True]
    assert "the limit is 32768 bytes" in (fake.requests[0].error or "")
    assert fake.pipelines_calls(strict_only=False) == []
    assert fake.dropped == fake.requests
    assert fake.workspace.find("id", "u1") is None


def test_call_of_exactly_32_kb_is_accepted(fake: FakeCustomerIO) -> None:
    # GIVEN an identify body of exactly 32768 bytes
    traits = padded_traits(31_000)
    base = json.dumps({"userId": "u1", "traits": {**traits, "last": ""}}).encode()
    body = json.dumps({"userId": "u1", "traits": {**traits, "last": "x" * (32_768 - len(base))}}).encode()
    assert len(body) == 32_768

    # WHEN it is sent
    reply = pipelines(fake, "/v1/identify", raw=body)

    # THEN it is accepted
    assert reply.status == 200
    assert [c["userId"] for c in fake.pipelines_calls()] == ["u1"]


def test_batch_item_over_32_kb_is_dropped_alone_with_a_200(fake: FakeCustomerIO) -> None:
    # GIVEN a batch under 500 KB whose second item is over 32 KB
    big = {"type": "identify", "userId": "u2", "traits": padded_traits(40_000)}
    payload = {"batch": [{"type": "identify", "userId": "u1"}, big, {"type": "identify", "userId": "u3"}]}

    # WHEN it is sent
    reply = pipelines(fake, "/v1/batch", payload)

    # THEN Customer.io answers 200 and only the over-size item is lost
    assert (reply.status, reply.body) == (200, {})
    (record,) = fake.requests
    assert record.rejected == frozenset({1})
    assert "batch[1] is " in (record.error or "")
    assert "the limit is 32768 bytes per call" in (record.error or "")
    assert [c["userId"] for c in fake.pipelines_calls()] == ["u1", "u3"]
    assert fake.dropped == [record]


def test_batch_over_500_kb_gets_200_and_is_dropped(fake: FakeCustomerIO) -> None:
    # GIVEN a batch of small valid items totalling more than 500000 bytes
    items = [{"type": "identify", "userId": f"u{i}", "traits": {"pad": "x" * 900}} for i in range(560)]
    body = json.dumps({"batch": items}).encode()
    assert len(body) > 500_000

    # WHEN it is sent
    reply = pipelines(fake, "/v1/batch", raw=body)

    # THEN it gets 200 {} and nothing is accepted
    assert (reply.status, reply.body) == (200, {})
    assert fake.requests[0].dropped
    assert f"batch request body is {len(body)} bytes; the limit is 500000 bytes" in (
        fake.requests[0].error or ""
    )
    assert fake.pipelines_calls() == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"userId": "u" * 151}, "identifier is 151 bytes"),
        ({"userId": "u1", "traits": {"bio": "x" * 1001}}, "attribute bio is 1001 bytes"),
        ({"userId": "u1", "traits": {f"a{i}": i for i in range(301)}}, "301 attributes"),
    ],
    ids=["identifier", "attribute-value", "attribute-count"],
)
def test_identify_over_journeys_limits_gets_200_and_is_dropped(
    fake: FakeCustomerIO, payload: dict[str, Any], reason: str
) -> None:
    # GIVEN an identify call over one of Journeys' limits
    # WHEN it is sent strict
    reply = pipelines(fake, "/v1/identify", payload)

    # THEN Pipelines takes it (200) but the workspace never sees it
    assert (reply.status, reply.body) == (200, {})
    assert fake.requests[0].dropped
    assert reason in (fake.requests[0].error or "")
    assert fake.pipelines_calls() == []


def test_event_name_over_100_bytes_is_dropped_in_a_batch_and_the_rest_kept(fake: FakeCustomerIO) -> None:
    # GIVEN a batch whose first track call has a 101-byte event name
    payload = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "e" * 101},
            {"type": "track", "userId": "u1", "event": "Signed Up"},
        ]
    }

    # WHEN it is sent
    reply = pipelines(fake, "/v1/batch", payload)

    # THEN 200, the long-named event is lost and the other kept
    assert reply.status == 200
    assert fake.requests[0].rejected == frozenset({0})
    assert "event name is 101 bytes" in (fake.requests[0].error or "")
    assert [c["event"] for c in fake.pipelines_calls()] == ["Signed Up"]


def test_body_over_4_mb_gets_413_and_the_connection_stays_usable(fake: FakeCustomerIO) -> None:
    # GIVEN one keep-alive connection and a body over 4 MB
    conn = http.client.HTTPConnection(fake.host, fake.pipelines_port, timeout=10)
    body = b"x" * (4 * 1024 * 1024 + 1)
    try:
        # WHEN it is posted, then a normal call follows on the same connection
        too_big = pipelines(fake, "/v1/batch", raw=body, conn=conn)
        after = pipelines(fake, "/v1/identify", {"userId": "u1"}, conn=conn)
    finally:
        conn.close()

    # THEN the big one gets 413 (recorded without its body) and the next call succeeds
    assert too_big.status == 413
    assert "too large" in too_big.body["meta"]["error"]
    assert after.status == 200
    first = fake.requests[0]
    assert (first.status, first.body) == (413, b"")


# --- batch expansion and messageId -------------------------------------------------------------------


def test_pipelines_calls_expands_batches_in_order_and_keeps_message_ids(fake: FakeCustomerIO) -> None:
    # GIVEN a single identify, then a batch of three calls, then a single alias
    batch = [
        {"type": "identify", "userId": "u1", "messageId": "m-2", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "u1", "event": "Upgraded", "messageId": "m-3"},
        {"type": "group", "groupId": "g1", "userId": "u1", "messageId": "m-4"},
    ]

    # WHEN they are sent
    replies = [
        pipelines(fake, "/v1/identify", {"userId": "u1", "messageId": "m-1"}),
        pipelines(fake, "/v1/batch", {"batch": batch, "context": {"ip": "10.0.0.1"}}),
        pipelines(fake, "/v1/alias", {"previousId": "anon-1", "userId": "u1", "messageId": "m-5"}),
    ]

    # THEN every call is listed individually, in order, with type and messageId
    assert [r.status for r in replies] == [200, 200, 200]
    calls = fake.pipelines_calls()
    assert [(c["type"], c["messageId"]) for c in calls] == [
        ("identify", "m-1"),
        ("identify", "m-2"),
        ("track", "m-3"),
        ("group", "m-4"),
        ("alias", "m-5"),
    ]
    assert calls[1] == batch[0]
    assert len(fake.requests_to("/v1/batch")) == 1
    assert fake.requests_to("/v1/batch", method="post")[0].json["context"] == {"ip": "10.0.0.1"}


def test_retry_with_same_message_id_shows_attempts_but_one_accepted_call(fake: FakeCustomerIO) -> None:
    # GIVEN the first batch attempt fails with a 500
    fake.fail("/v1/batch", Fault(status=500))
    payload = {"batch": [{"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"}]}

    # WHEN the client retries the exact same body
    first = pipelines(fake, "/v1/batch", payload)
    second = pipelines(fake, "/v1/batch", payload)

    # THEN two attempts are recorded with the same messageId and only the second is accepted
    assert [first.status, second.status] == [500, 200]
    attempts = fake.requests_to("/v1/batch")
    assert [a.json["batch"][0]["messageId"] for a in attempts] == ["m-1", "m-1"]
    assert [a.accepted for a in attempts] == [False, True]
    assert [c["messageId"] for c in fake.pipelines_calls()] == ["m-1"]


def test_gzip_and_chunked_bodies_are_decoded(fake: FakeCustomerIO) -> None:
    # GIVEN a gzip-compressed batch (as cdp-analytics-python sends with gzip=True)
    compressed = gzip.compress(json.dumps({"batch": [{"type": "identify", "userId": "gz"}]}).encode())

    # WHEN it is sent, and a chunked identify follows
    zipped = pipelines(fake, "/v1/batch", raw=compressed, headers={"Content-Encoding": "gzip"})
    conn = http.client.HTTPConnection(fake.host, fake.pipelines_port, timeout=5)
    try:
        conn.request(
            "POST",
            "/v1/identify",
            body=iter([b'{"userId":', b' "chunked"}']),
            headers={"Authorization": PIPELINES_AUTH, "X-Strict-Mode": "1"},
            encode_chunked=True,
        )
        chunked = conn.getresponse()
        chunked.read()
    finally:
        conn.close()

    # THEN both are understood and accepted
    assert zipped.status == 200
    assert chunked.status == 200
    assert [c["userId"] for c in fake.pipelines_calls()] == ["gz", "chunked"]
    assert fake.requests[0].body == gzip.decompress(compressed)


# --- App API: send email -----------------------------------------------------------------------------


def test_send_email_returns_delivery_id_and_records_the_send(fake: FakeCustomerIO) -> None:
    # GIVEN a valid templated send
    payload = valid_email()

    # WHEN it is sent twice with Bearer auth
    before = int(time.time())
    first = app(fake, "POST", "/v1/send/email", payload)
    second = app(fake, "POST", "/v1/send/email", payload)

    # THEN each gets a unique delivery_id and a unix queued_at, and both are recorded
    assert first.status == second.status == 200
    assert set(first.body) == {"delivery_id", "queued_at"}
    assert isinstance(first.body["delivery_id"], str)
    assert first.body["delivery_id"] != second.body["delivery_id"]
    assert isinstance(first.body["queued_at"], int)
    assert first.body["queued_at"] >= before
    emails = fake.emails
    assert [e["delivery_id"] for e in emails] == [first.body["delivery_id"], second.body["delivery_id"]]
    assert emails[0]["json"] == payload
    assert emails[0]["headers"]["authorization"] == APP_AUTH
    assert fake.app_auth_header() == APP_AUTH


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong", basic(APP_KEY), APP_KEY],
    ids=["missing", "wrong-token", "basic", "no-scheme"],
)
def test_app_api_rejects_bad_bearer_tokens(fake: FakeCustomerIO, auth: str | None) -> None:
    # GIVEN a valid send
    # WHEN it arrives without the right Bearer token
    reply = app(fake, "POST", "/v1/send/email", valid_email(), auth=auth)

    # THEN it gets 401 {"meta":{"error":"Unauthorized"}} and nothing is sent
    assert reply.status == 401
    assert reply.body == {"meta": {"error": "Unauthorized"}}
    assert fake.emails == []
    assert fake.requests[0].status == 401


def test_send_email_without_template_needs_body_subject_and_from(fake: FakeCustomerIO) -> None:
    # GIVEN a send with no transactional_message_id but body, subject and from
    payload = valid_email(subject="Hi", body="<p>Hi</p>", **{"from": "team@example.com"})
    del payload["transactional_message_id"]

    # WHEN it is sent
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN it is accepted
    assert reply.status == 200
    assert len(fake.emails) == 1


def test_send_email_accepts_15_recipients_with_display_names_and_valid_extras(fake: FakeCustomerIO) -> None:
    # GIVEN exactly 15 recipients across to/cc/bcc, a valid attachment and send_at within 90 days
    to = ", ".join(["Ada Lovelace <ada@example.com>"] + [f"to{i}@example.com" for i in range(9)])
    payload = valid_email(
        to=to,
        cc="c1@example.com, c2@example.com, c3@example.com",
        bcc="b1@example.com, b2@example.com",
        attachments={"hello.txt": base64.b64encode(b"hello").decode()},
        send_at=int(time.time()) + 89 * 24 * 3600,
    )

    # WHEN it is sent
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN it is accepted
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    ("overrides", "removed", "message"),
    [
        ({}, "identifiers", "identifiers must be an object with exactly one of id, email or cio_id"),
        (
            {"identifiers": "user-1"},
            None,
            "identifiers must be an object with exactly one of id, email or cio_id",
        ),
        ({"identifiers": {}}, None, "identifiers must be an object with exactly one of id, email or cio_id"),
        (
            {"identifiers": {"id": "u1", "email": "ada@example.com"}},
            None,
            "identifiers must be an object with exactly one of id, email or cio_id",
        ),
        (
            {"identifiers": {"phone": "123"}},
            None,
            "identifiers must be an object with exactly one of id, email or cio_id",
        ),
        ({}, "to", "to is required"),
        ({"to": ""}, None, "to is required"),
        ({"cc": ["x@example.com"]}, None, "cc must be a string"),
        (
            {
                "to": ", ".join(f"to{i}@example.com" for i in range(10)),
                "cc": "c1@example.com, c2@example.com, c3@example.com",
                "bcc": "b1@example.com, b2@example.com, b3@example.com",
            },
            None,
            "too many recipients: 16 (at most 15 across to, cc and bcc)",
        ),
        (
            {},
            "transactional_message_id",
            "body, subject, from required: "
            "body, subject and from are required without a transactional_message_id",
        ),
        (
            {"transactional_message_id": True},
            None,
            "transactional_message_id must be an integer or a trigger name",
        ),
        (
            {"transactional_message_id": ""},
            None,
            "transactional_message_id must be an integer or a trigger name",
        ),
        ({"message_data": "name=Ada"}, None, "message_data must be an object"),
        ({"attachments": ["a.txt"]}, None, "attachments must be an object of filename to base64 content"),
        ({"attachments": {"a.txt": "not base64!"}}, None, "Attachment must be base64 encoded"),
        ({"attachments": {"a.txt": 12}}, None, "Attachment must be base64 encoded"),
        ({"attachments": {"README": "QQ=="}}, None, "attachment README needs a file extension"),
        ({"send_at": "tomorrow"}, None, "send_at must be a unix timestamp (integer seconds)"),
    ],
)
def test_send_email_validation(
    fake: FakeCustomerIO, overrides: dict[str, Any], removed: str | None, message: str
) -> None:
    # GIVEN a send that breaks one rule
    payload = valid_email(**overrides)
    if removed is not None:
        del payload[removed]

    # WHEN it is sent
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN it gets a 400 with Customer.io's error shape and is not recorded as sent
    assert reply.status == 400
    assert reply.body == {"meta": {"error": message}}
    assert fake.emails == []
    assert fake.requests[0].error == message


def test_send_email_answers_413_to_attachments_of_2_mb_or_more(fake: FakeCustomerIO) -> None:
    # GIVEN attachments whose base64 adds up to exactly 2 MB
    half = "A" * (1024 * 1024)
    payload = valid_email(attachments={"a.bin": half, "b.bin": half})

    # WHEN it is sent
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN Customer.io's 413 answers it and nothing is sent
    assert reply.status == 413
    assert reply.body == {"meta": {"error": "Total attachment size exceeds the limit"}}
    assert fake.emails == []


@pytest.mark.parametrize("filename", ["setup.exe", "invoice.PDF.js", "macro.vbs", "run.BAT"])
def test_send_email_answers_403_to_a_forbidden_attachment_type(fake: FakeCustomerIO, filename: str) -> None:
    # GIVEN an attachment of a type Customer.io refuses, beside an allowed one
    payload = valid_email(attachments={"ok.pdf": "QQ==", filename: "QQ=="})

    # WHEN it is sent with a valid App key
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN 403 "Forbidden file type": a refusal of the content, not of the key
    assert reply.status == 403
    assert reply.body == {"meta": {"error": "Forbidden file type"}}
    assert fake.emails == []


def test_send_email_rejects_send_at_more_than_90_days_ahead(fake: FakeCustomerIO) -> None:
    # GIVEN a send_at 91 days ahead
    payload = valid_email(send_at=int(time.time()) + 91 * 24 * 3600)

    # WHEN it is sent
    reply = app(fake, "POST", "/v1/send/email", payload)

    # THEN it is rejected
    assert reply.status == 400
    assert reply.body == {"meta": {"error": "send_at cannot be more than 90 days in the future"}}


def test_send_email_rejects_non_object_and_non_json_bodies(fake: FakeCustomerIO) -> None:
    # GIVEN a JSON array body and a non-JSON body
    # WHEN they are sent
    array = app(fake, "POST", "/v1/send/email", [valid_email()])
    garbage = app(fake, "POST", "/v1/send/email", raw=b"to=ada@example.com")

    # THEN both are 400 with the matching message
    assert (array.status, array.body) == (400, {"meta": {"error": "request body must be a JSON object"}})
    assert (garbage.status, garbage.body) == (400, {"meta": {"error": "invalid JSON"}})


def test_known_templates_reject_unknown_transactional_message_ids() -> None:
    # GIVEN a fake that knows template 42 and trigger "welcome"
    with FakeCustomerIO(known_templates={42, "welcome"}) as server:
        # WHEN sends use 42, "42", "WELCOME" and the unknown 7
        statuses = [
            app(server, "POST", "/v1/send/email", valid_email(transactional_message_id=tid)).status
            for tid in (42, "42", "WELCOME")
        ]
        unknown = app(server, "POST", "/v1/send/email", valid_email(transactional_message_id=7))

        # THEN known ids are accepted and the unknown one gets Customer.io's 400
        assert statuses == [200, 200, 200]
        assert unknown.status == 400
        assert unknown.body == {"meta": {"error": "transactional_message_id not found"}}
        assert len(server.emails) == 3


# --- App API: people search and segments -------------------------------------------------------------


def search(fake: FakeCustomerIO, filter_: Any, query: str = "") -> Reply:
    return app(fake, "POST", "/v1/customers" + query, {"filter": filter_})


def test_people_search_pages_with_opaque_next_cursors(fake: FakeCustomerIO) -> None:
    # GIVEN five people in segment 1 and one outside it
    fake.people = [
        *(
            {"id": f"p{i}", "email": f"p{i}@example.com", "cio_id": f"c{i}", "segments": [1]}
            for i in range(5)
        ),
        {"id": "outsider", "email": "o@example.com", "cio_id": "co"},
    ]

    # WHEN pages of two are fetched by following `next` as `start`
    pages: list[dict[str, Any]] = []
    start = ""
    while True:
        reply = search(fake, {"segment": {"id": 1}}, "?limit=2" + (f"&start={start}" if start else ""))
        assert reply.status == 200
        pages.append(reply.body)
        start = reply.body["next"]
        if not start:
            break

    # THEN three pages cover the segment once, and the last `next` is empty
    assert [page["ids"] for page in pages] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    assert pages[0]["identifiers"] == [
        {"email": "p0@example.com", "id": "p0", "cio_id": "c0"},
        {"email": "p1@example.com", "id": "p1", "cio_id": "c1"},
    ]
    # AND the cursors are opaque: not offsets a client could compute
    cursors = [page["next"] for page in pages[:2]]
    assert all(cursor and not cursor.isdigit() for cursor in cursors)
    assert search(fake, {"segment": {"id": 1}}, "?limit=2&start=2").status == 400


def test_people_search_defaults_to_50_per_page(fake: FakeCustomerIO) -> None:
    # GIVEN 120 people
    fake.people = [{"id": f"p{i}", "email": None, "cio_id": f"c{i}"} for i in range(120)]

    # WHEN searching without limit
    reply = search(fake, {"attribute": {"field": "id", "operator": "exists"}})

    # THEN 50 come back with a cursor to the rest
    assert reply.status == 200
    assert len(reply.body["identifiers"]) == 50
    following = search(
        fake, {"attribute": {"field": "id", "operator": "exists"}}, f"?start={reply.body['next']}"
    )
    assert following.body["ids"][0] == "p50"


@pytest.mark.parametrize(
    ("filter_", "found"),
    [
        ({"attribute": {"field": "plan", "operator": "eq", "value": "pro"}}, ["ada", "grace"]),
        ({"attribute": {"field": "plan", "operator": "eq", "value": "PRO"}}, ["ada", "grace"]),
        ({"attribute": {"field": "vip", "operator": "eq", "value": "true"}}, ["grace"]),
        ({"attribute": {"field": "age", "operator": "eq", "value": "36"}}, ["ada"]),
        ({"attribute": {"field": "plan", "operator": "exists"}}, ["ada", "grace", "alan"]),
        ({"attribute": {"field": "email", "operator": "eq", "value": "Alan@Example.com"}}, ["alan"]),
        ({"segment": {"id": 7}}, ["alan"]),
        ({"not": {"segment": {"id": 7}}}, ["ada", "grace", "nobody"]),
        (
            {
                "and": [
                    {"attribute": {"field": "plan", "operator": "eq", "value": "pro"}},
                    {"not": {"attribute": {"field": "vip", "operator": "exists"}}},
                ]
            },
            ["ada"],
        ),
        (
            {
                "or": [
                    {"segment": {"id": 7}},
                    {"attribute": {"field": "vip", "operator": "eq", "value": True}},
                ]
            },
            ["grace", "alan"],
        ),
    ],
    ids=[
        "eq",
        "eq-ignores-case",
        "eq-bool-as-text",
        "eq-number",
        "exists",
        "eq-email",
        "segment",
        "not",
        "and",
        "or",
    ],
)
def test_people_search_evaluates_customerio_filters(
    fake: FakeCustomerIO, filter_: Any, found: list[str]
) -> None:
    # GIVEN four people with attributes and segments
    fake.people = [
        {"id": "ada", "email": "ada@example.com", "attributes": {"plan": "pro", "age": 36}},
        {"id": "grace", "email": "grace@example.com", "attributes": {"plan": "pro", "vip": True}},
        {"id": "alan", "email": "alan@example.com", "attributes": {"plan": "free"}, "segments": [7]},
        {"id": "nobody", "email": None},
    ]

    # WHEN searching with the filter
    reply = search(fake, filter_, "?limit=1000")

    # THEN exactly the matching people come back, in workspace order
    assert reply.status == 200
    assert reply.body["ids"] == found


@pytest.mark.parametrize(
    ("query", "payload", "message"),
    [
        ("?limit=0", {"filter": {}}, "limit must be an integer between 1 and 1000"),
        ("?limit=1001", {"filter": {}}, "limit must be an integer between 1 and 1000"),
        ("?limit=ten", {"filter": {}}, "limit must be an integer between 1 and 1000"),
        ("?start=abc", {"filter": {"segment": {"id": 1}}}, "start is not a valid pagination token"),
        ("", {}, "filter is required and must be an object"),
        ("", {"filter": "email = x"}, "filter is required and must be an object"),
        ("", [], "filter is required and must be an object"),
        ("", {"filter": {}}, "filter must have exactly one of and, or, not, segment, attribute, got 0"),
        (
            "",
            {"filter": {"segment": {"id": 1}, "attribute": {"field": "a", "operator": "exists"}}},
            "filter must have exactly one of and, or, not, segment, attribute, got 2",
        ),
        ("", {"filter": {"email": "x"}}, "filter has an unknown property 'email'"),
        ("", {"filter": {"and": []}}, "filter.and must be a non-empty array of conditions"),
        ("", {"filter": {"segment": {"id": "1"}}}, "filter.segment.id must be an integer"),
        (
            "",
            {"filter": {"attribute": {"field": "plan", "operator": "gt", "value": "1"}}},
            "filter.attribute.operator must be one of eq, exists",
        ),
        (
            "",
            {"filter": {"or": [{"attribute": {"field": "plan", "operator": "eq"}}]}},
            "filter.or[0].attribute.value is required with the eq operator",
        ),
    ],
)
def test_people_search_validation(fake: FakeCustomerIO, query: str, payload: Any, message: str) -> None:
    # GIVEN a search with a bad limit, start or filter
    # WHEN it is sent
    reply = app(fake, "POST", "/v1/customers" + query, payload)

    # THEN it gets a 400 naming the problem
    assert reply.status == 400
    assert reply.body["meta"]["error"].startswith(message)


def test_people_search_accepts_limit_1000_and_requires_auth(fake: FakeCustomerIO) -> None:
    # GIVEN the default people
    # WHEN searching with limit=1000, then without auth
    ok = search(fake, {"attribute": {"field": "id", "operator": "exists"}}, "?limit=1000")
    denied = app(fake, "POST", "/v1/customers", {"filter": {"segment": {"id": 1}}}, auth=None)

    # THEN the first returns everyone, the second 401
    assert ok.status == 200
    assert ok.body["ids"] == [p["id"] for p in fake.people]
    assert ok.body["next"] == ""
    assert (denied.status, denied.body) == (401, {"meta": {"error": "Unauthorized"}})


def test_people_identified_through_pipelines_and_track_are_found_and_deleted_ones_are_not(
    fake: FakeCustomerIO,
) -> None:
    # GIVEN people identified through Pipelines and through Track v1 and v2
    pipelines(fake, "/v1/identify", {"userId": "p-1", "traits": {"email": "p1@example.com", "plan": "team"}})
    send(
        fake,
        "PUT",
        "/api/v1/customers/t-1",
        {"email": "t1@example.com", "plan": "team"},
        headers={"Authorization": TRACK_AUTH},
    )
    v2 = {
        "type": "person",
        "identifiers": {"id": "t-2"},
        "action": "identify",
        "attributes": {"plan": "team"},
    }
    send(fake, "POST", "/api/v2/batch", {"batch": [v2]}, headers={"Authorization": TRACK_AUTH})
    team = {"attribute": {"field": "plan", "operator": "eq", "value": "team"}}
    assert search(fake, team).body["ids"] == ["p-1", "t-1", "t-2"]
    assert search(fake, team).body["identifiers"][0]["email"] == "p1@example.com"

    # WHEN one is deleted through Pipelines' "User Deleted", one by Track's DELETE, one by a v2 delete
    pipelines(fake, "/v1/track", {"userId": "p-1", "event": "User Deleted"})
    send(fake, "DELETE", "/api/v1/customers/t1%40example.com", headers={"Authorization": TRACK_AUTH})
    gone = {"type": "person", "identifiers": {"id": "t-2"}, "action": "delete"}
    send(fake, "POST", "/api/v2/entity", gone, headers={"Authorization": TRACK_AUTH})

    # THEN search no longer finds them
    assert search(fake, team).body["ids"] == []
    assert [p["id"] for p in fake.workspace.deleted] == ["p-1", "t-1", "t-2"]


def test_segments_lists_fake_segments_in_customerio_shape(fake: FakeCustomerIO) -> None:
    # GIVEN the default segments
    # WHEN they are listed
    reply = app(fake, "GET", "/v1/segments")

    # THEN both come back with Customer.io's fields
    assert reply.status == 200
    assert reply.body == {"segments": fake.segments}
    assert len(reply.body["segments"]) == 2
    for segment in reply.body["segments"]:
        assert set(segment) == {
            "id",
            "deduplicate_id",
            "name",
            "description",
            "state",
            "progress",
            "type",
            "tags",
            "created_at",
            "updated_at",
        }


def test_segments_can_be_replaced_by_tests_and_need_auth(fake: FakeCustomerIO) -> None:
    # GIVEN a test-defined segment list
    fake.segments = [{"id": 9, "name": "VIP"}]

    # WHEN listed with and without a token
    ok = app(fake, "GET", "/v1/segments")
    denied = app(fake, "GET", "/v1/segments", auth="Bearer nope")

    # THEN the custom list is served, and the bad token gets 401
    assert ok.body == {"segments": [{"id": 9, "name": "VIP"}]}
    assert denied.status == 401


# --- unknown routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/identify"),
        ("DELETE", "/v1/customers/user-1"),
        ("DELETE", "/v1/customers"),
        ("POST", "/v1/segments"),
        ("POST", "/v2/batch"),
        ("GET", "/api/v1/customers/user-1"),
        ("POST", "/api/v1/customers/"),
        ("PUT", "/api/v3/entity"),
        ("GET", "/"),
    ],
)
def test_unknown_path_or_method_is_404(fake: FakeCustomerIO, method: str, path: str) -> None:
    # GIVEN a route Customer.io (as faked) does not have
    # WHEN it is requested with valid credentials for its listener
    auth = TRACK_AUTH if api_of(path) == "track" else APP_AUTH
    reply = send(fake, method, path, {}, headers={"Authorization": auth})

    # THEN it is 404 and recorded
    assert reply.status == 404
    assert reply.body == {"meta": {"error": "not found"}}
    assert fake.requests[0].status == 404


# --- fault injection ---------------------------------------------------------------------------------


def test_429_fault_uses_customerio_body_and_is_consumed_once(fake: FakeCustomerIO) -> None:
    # GIVEN one queued 429 on /v1/batch
    fake.fail("/v1/batch", Fault(status=429))
    payload = {"batch": [{"type": "identify", "userId": "u1"}]}

    # WHEN two batches are sent
    first = pipelines(fake, "/v1/batch", payload)
    second = pipelines(fake, "/v1/batch", payload)

    # THEN the first gets a rate-limit body without Retry-After, the second passes
    assert first.status == 429
    assert first.body == {"meta": {"errors": ["rate limited"]}}
    assert "retry-after" not in first.headers
    assert second.status == 200
    assert [(r.status, r.fault) for r in fake.requests] == [(429, "429"), (200, None)]
    assert fake.faults_injected == {"429": 1}
    assert len(fake.pipelines_calls()) == 1


def test_429_with_retry_after_sets_the_header(fake: FakeCustomerIO) -> None:
    # GIVEN a 429 with Retry-After
    fake.fail("/v1/send/email", Fault.rate_limited(retry_after="3"))

    # WHEN a send arrives
    reply = app(fake, "POST", "/v1/send/email", valid_email())

    # THEN the App API's 429: its errors body and the header; no email is recorded
    assert reply.status == 429
    assert reply.headers["retry-after"] == "3"
    (error,) = reply.body["errors"]
    assert error["status"] == "429"
    assert error["detail"].startswith("rate limited to 10 requests per 1s (reference ")
    assert fake.emails == []
    assert fake.faults_injected == {"429-retry-after": 1}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "Internal Server Error"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    ],
)
def test_5xx_faults_use_customerio_error_shape(fake: FakeCustomerIO, status: int, message: str) -> None:
    # GIVEN a 5xx fault on send/email
    fake.fail("/v1/send/email", Fault.server_error(status))

    # WHEN a send arrives
    reply = app(fake, "POST", "/v1/send/email", valid_email())

    # THEN the status and {"meta":{"error":...}} come back and nothing counts as sent
    assert reply.status == status
    assert reply.body == {"meta": {"error": message}}
    assert fake.emails == []
    assert fake.requests[0].fault == str(status)
    assert not fake.requests[0].accepted


def test_fault_body_override_and_sequences_with_pass_through(fake: FakeCustomerIO) -> None:
    # GIVEN a sequence: custom 400, pass, 503
    fake.fail(
        "/v1/identify",
        Fault(status=400, body={"meta": {"errors": ["custom"]}}),
        Fault(),
        Fault(status=503),
    )
    assert fake.pending_faults("/v1/identify") == 3

    # WHEN four identify calls are sent
    replies = [pipelines(fake, "/v1/identify", {"userId": f"u{i}"}) for i in range(4)]

    # THEN the faults apply in order, one per request
    assert [r.status for r in replies] == [400, 200, 503, 200]
    assert replies[0].body == {"meta": {"errors": ["custom"]}}
    assert [c["userId"] for c in fake.pipelines_calls()] == ["u1", "u3"]
    assert fake.pending_faults() == 0
    assert fake.faults_injected == {"400": 1, "503": 1}


def test_wildcard_faults_apply_to_any_path_after_path_specific_ones(fake: FakeCustomerIO) -> None:
    # GIVEN a "*" fault and a path-specific fault
    fake.fail("*", Fault(status=500))
    fake.fail("/v1/track", Fault(status=503))

    # WHEN track, segments, track are requested
    track_1 = pipelines(fake, "/v1/track", {"userId": "u1", "event": "E"})
    segments = app(fake, "GET", "/v1/segments")
    track_2 = pipelines(fake, "/v1/track", {"userId": "u1", "event": "E"})

    # THEN the path-specific fault hits first, the wildcard next, then all is normal
    assert [track_1.status, segments.status, track_2.status] == [503, 500, 200]


def test_drop_fault_closes_the_connection_without_a_response(fake: FakeCustomerIO) -> None:
    # GIVEN a drop fault on /v1/batch
    fake.fail("/v1/batch", Fault.dropped())

    # WHEN a batch is sent with http.client
    # THEN the client sees a connection error
    with pytest.raises(ConnectionError):
        pipelines(fake, "/v1/batch", {"batch": [{"type": "identify", "userId": "u1"}]})

    # THEN the request is recorded with no status and nothing is accepted
    (record,) = fake.requests
    assert (record.status, record.fault) == (None, "drop")
    assert record.json == {"batch": [{"type": "identify", "userId": "u1"}]}
    assert fake.pipelines_calls() == []
    assert fake.faults_injected == {"drop": 1}

    # THEN the server keeps serving new connections
    assert pipelines(fake, "/v1/batch", {"batch": [{"type": "identify", "userId": "u1"}]}).status == 200


def test_drop_fault_surfaces_as_protocol_error_in_urllib3(fake: FakeCustomerIO) -> None:
    # GIVEN a drop fault and a urllib3 pool without retries
    fake.fail("/v1/send/email", Fault(drop=True))
    pool = urllib3.HTTPConnectionPool(fake.host, fake.pipelines_port, retries=False, timeout=5.0)

    # WHEN a send is posted
    # THEN urllib3 raises a ProtocolError (connection aborted)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        pool.request("POST", "/v1/send/email", json=valid_email(), headers={"Authorization": APP_AUTH})
    pool.close()
    assert fake.emails == []


def test_delay_fault_triggers_client_read_timeout_and_is_still_accepted(fake: FakeCustomerIO) -> None:
    # GIVEN a slow-only fault longer than the client's read timeout
    fake.fail("/v1/identify", Fault.slow(3.0))
    pool = urllib3.HTTPConnectionPool(
        fake.host, fake.pipelines_port, retries=False, timeout=urllib3.Timeout(connect=2.0, read=0.2)
    )
    headers = {"Authorization": PIPELINES_AUTH, "X-Strict-Mode": "1"}

    # WHEN the call is made
    # THEN the client times out reading the response
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        pool.request("POST", "/v1/identify", json={"userId": "u1", "messageId": "m-1"}, headers=headers)
    pool.close()

    # THEN the server still accepted the call (the classic duplicate-on-retry situation)
    assert fake.wait_for(lambda: len(fake.pipelines_calls()) == 1, timeout=2.0)
    (record,) = fake.requests
    assert (record.status, record.fault, record.accepted) == (200, "slow", True)
    assert fake.pipelines_calls()[0]["messageId"] == "m-1"
    assert fake.faults_injected == {"slow": 1}


def test_delay_with_status_answers_the_status_after_waiting(fake: FakeCustomerIO) -> None:
    # GIVEN a short delay combined with a 503
    fake.fail("/v1/identify", Fault(status=503, delay=0.05))

    # WHEN a call is made with a generous timeout
    reply = pipelines(fake, "/v1/identify", {"userId": "u1"})

    # THEN the 503 arrives
    assert reply.status == 503
    assert fake.requests[0].fault == "503"


def test_outage_answers_503_to_everything_until_turned_off(fake: FakeCustomerIO) -> None:
    # GIVEN an outage
    fake.outage(True)

    # WHEN both APIs and an unknown path are called
    during = [
        pipelines(fake, "/v1/identify", {"userId": "u1"}).status,
        app(fake, "POST", "/v1/send/email", valid_email()).status,
        app(fake, "GET", "/v1/segments").status,
        send(fake, "GET", "/nowhere").status,
    ]
    fake.outage(False)
    after = pipelines(fake, "/v1/identify", {"userId": "u1"})

    # THEN everything was 503 during the outage and nothing was accepted; afterwards calls pass
    assert during == [503, 503, 503, 503]
    assert after.status == 200
    assert fake.faults_injected == {"outage": 4}
    assert fake.emails == []
    assert len(fake.pipelines_calls()) == 1
    assert [r.fault for r in fake.requests] == ["outage"] * 4 + [None]


def test_fault_validation() -> None:
    # GIVEN / WHEN invalid faults or chaos settings are built
    # THEN they are refused loudly
    with pytest.raises(ValueError, match="retry_after"):
        Fault(retry_after="1")
    with pytest.raises(ValueError, match="delay"):
        Fault(delay=-1)
    with pytest.raises(ValueError, match="status"):
        Fault(status=1000)
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.from_kind("explode")
    server = FakeCustomerIO()
    with pytest.raises(ValueError, match="at least one"):
        server.fail("/v1/batch")
    with pytest.raises(ValueError, match="between 0 and 1"):
        server.chaos(1.5)
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.chaos(0.5, kinds=("boom",))


def test_fault_kind_labels() -> None:
    # GIVEN faults of every kind
    # WHEN their labels are read
    # THEN they match the chaos kind names
    assert Fault(status=429).kind == "429"
    assert Fault(status=429, retry_after="1").kind == "429-retry-after"
    assert Fault(drop=True, delay=1).kind == "drop"
    assert Fault(delay=0.1).kind == "slow"
    assert Fault().kind is None
    for kind in CHAOS_KINDS:
        assert Fault.from_kind(kind).kind == kind


# --- chaos -------------------------------------------------------------------------------------------


def run_chaos(seed: int, requests: int = 60) -> tuple[list[int | str], dict[str, int], int]:
    with FakeCustomerIO() as server:
        server.chaos(0.5, seed=seed, kinds=("429", "429-retry-after", "500", "503", "drop"))
        outcomes: list[int | str] = []
        for i in range(requests):
            try:
                outcomes.append(pipelines(server, "/v1/identify", {"userId": f"u{i}"}).status)
            except ConnectionError:
                outcomes.append("drop")
        return outcomes, server.faults_injected, len(server.pipelines_calls())


def test_chaos_with_a_seed_is_deterministic() -> None:
    # GIVEN two fakes with the same chaos seed
    # WHEN the same sequential requests hit each
    first, first_counts, first_accepted = run_chaos(seed=7)
    second, second_counts, second_accepted = run_chaos(seed=7)

    # THEN outcomes and counters are identical, and contain both failures and successes
    assert first == second
    assert first_counts == second_counts
    assert 200 in first
    assert {429, 500, 503, "drop"} & set(first)
    assert sum(first_counts.values()) == len([o for o in first if o != 200])
    assert first_accepted == second_accepted == first.count(200)


def test_chaos_rate_one_with_retry_after_and_chaos_zero_turns_it_off(fake: FakeCustomerIO) -> None:
    # GIVEN chaos that always answers 429 with Retry-After, only on /v1/batch
    fake.chaos(1.0, seed=1, kinds=("429-retry-after",), retry_after="2", paths=["/v1/batch"])
    batch = {"batch": [{"type": "identify", "userId": "u1"}]}

    # WHEN batches and an identify are sent, then chaos is turned off
    faulted = [pipelines(fake, "/v1/batch", batch) for _ in range(3)]
    other_path = pipelines(fake, "/v1/identify", {"userId": "u1"})
    fake.chaos(0)
    after = pipelines(fake, "/v1/batch", batch)

    # THEN only /v1/batch was faulted, with the header, until chaos(0)
    assert [(r.status, r.headers.get("retry-after")) for r in faulted] == [(429, "2")] * 3
    assert other_path.status == 200
    assert after.status == 200
    assert fake.faults_injected == {"429-retry-after": 3}


def test_chaos_slow_kind_still_accepts_the_call(fake: FakeCustomerIO) -> None:
    # GIVEN chaos that always slows responses a little
    fake.chaos(1.0, kinds=("slow",), slow_delay=0.01)

    # WHEN a call is made with a generous timeout
    reply = pipelines(fake, "/v1/track", {"userId": "u1", "event": "E"})

    # THEN it succeeds and counts as accepted
    assert reply.status == 200
    assert fake.requests[0].fault == "slow"
    assert len(fake.pipelines_calls()) == 1


# --- reset -------------------------------------------------------------------------------------------


def test_reset_clears_records_and_faults_but_keeps_configuration() -> None:
    # GIVEN a configured fake with records, queued faults, chaos and an outage
    with FakeCustomerIO(known_templates={1}, latency=0.0) as server:
        server.people = [{"id": "only", "email": "only@example.com", "cio_id": "c"}]
        app(server, "POST", "/v1/send/email", valid_email(transactional_message_id=1))
        pipelines(server, "/v1/identify", {"userId": "u1"})
        assert server.workspace.find("id", "u1") is not None
        server.fail("/v1/batch", Fault(status=500))
        server.chaos(1.0, kinds=("500",))
        server.outage(True)
        app(server, "GET", "/v1/segments")

        # WHEN it is reset
        server.reset()

        # THEN records, counters, faults and people identified since are gone; configuration is kept
        assert server.workspace.find("id", "u1") is None
        assert server.requests == []
        assert server.emails == []
        assert server.faults_injected == {}
        assert server.pending_faults() == 0
        assert pipelines(server, "/v1/batch", {"batch": [{"type": "identify", "userId": "u1"}]}).status == 200
        assert app(server, "POST", "/v1/send/email", valid_email(transactional_message_id=2)).status == 400
        assert server.people[0] == {"id": "only", "email": "only@example.com", "cio_id": "c"}


# --- transport behaviour -----------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_for_several_requests(fake: FakeCustomerIO) -> None:
    # GIVEN one http.client connection
    conn = http.client.HTTPConnection(fake.host, fake.pipelines_port, timeout=5)
    try:
        # WHEN two requests go over it
        first = pipelines(fake, "/v1/identify", {"userId": "u1"}, conn=conn)
        sock = conn.sock
        headers = {"Authorization": PIPELINES_AUTH, "X-Strict-Mode": "1"}
        conn.request("POST", "/v1/batch", body=b"{}", headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read())

        # THEN the socket was reused, the answers are HTTP/1.1 with Content-Length and no close
        assert first.status == 200
        assert sock is not None
        assert conn.sock is sock
        assert response.status == 400
        assert response.version == 11
        assert response.getheader("Content-Length") == str(len(json.dumps(body, separators=(",", ":"))))
        assert response.getheader("Connection") is None
        assert first.headers["content-length"] == "2"
    finally:
        conn.close()


def test_urllib3_pool_uses_a_single_connection(fake: FakeCustomerIO) -> None:
    # GIVEN a urllib3 pool of size one
    pool = urllib3.HTTPConnectionPool(
        fake.host, fake.pipelines_port, maxsize=1, block=True, retries=False, timeout=5.0
    )
    headers = {"Authorization": PIPELINES_AUTH, "X-Strict-Mode": "1"}

    # WHEN five calls are made
    statuses = [
        pool.request("POST", "/v1/identify", json={"userId": f"u{i}"}, headers=headers).status
        for i in range(5)
    ]

    # THEN all succeed over one connection
    assert statuses == [200] * 5
    assert pool.num_connections == 1
    pool.close()


def test_latency_is_adjustable_at_runtime(fake: FakeCustomerIO) -> None:
    # GIVEN a small latency set after start
    fake.latency = 0.01

    # WHEN a call is made
    reply = pipelines(fake, "/v1/identify", {"userId": "u1"})

    # THEN it still succeeds
    assert reply.status == 200


def test_concurrent_clients_are_all_recorded(fake: FakeCustomerIO) -> None:
    # GIVEN eight client threads with their own keep-alive connection
    errors: list[BaseException] = []

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection(fake.host, fake.pipelines_port, timeout=10)
        try:
            for i in range(25):
                payload = {"userId": f"w{worker}", "event": "E", "messageId": str(uuid.uuid4()), "n": i}
                assert pipelines(fake, "/v1/track", payload, conn=conn).status == 200
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    # WHEN they all send at once
    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # THEN every call is recorded exactly once
    assert errors == []
    calls = fake.pipelines_calls()
    assert fake.request_count == 200
    assert len(calls) == 200
    assert len({c["messageId"] for c in calls}) == 200


# --- robustness --------------------------------------------------------------------------------------


def test_malformed_request_line_gets_json_400_and_server_survives(fake: FakeCustomerIO) -> None:
    # GIVEN a garbage request line
    # WHEN it is sent on a raw socket
    answer = raw_exchange(fake, b"GARBAGE\r\n\r\n")

    # THEN a 400 comes back with a JSON body, and the server keeps serving
    assert answer.startswith(b"HTTP/1.")
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert answer.split(b"\r\n\r\n", 1)[1].startswith(b'{"meta"')
    assert pipelines(fake, "/v1/identify", {"userId": "u1"}).status == 200


def test_invalid_content_length_gets_400(fake: FakeCustomerIO) -> None:
    # GIVEN a request with a non-numeric Content-Length
    request = (
        b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nAuthorization: " + PIPELINES_AUTH.encode() + b"\r\n"
        b"Content-Length: lots\r\n\r\n{}"
    )

    # WHEN it is sent
    answer = raw_exchange(fake, request)

    # THEN it is answered 400 and recorded
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"
    assert b'"invalid Content-Length"' in answer
    assert fake.requests[0].status == 400


def test_unknown_http_method_gets_json_501(fake: FakeCustomerIO) -> None:
    # GIVEN an HTTP method nobody implements
    # WHEN it is sent
    answer = raw_exchange(fake, b"BREW /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")

    # THEN the server answers 501 as JSON and closes
    assert answer.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 501")
    assert b'{"meta"' in answer


def test_client_disconnect_mid_body_does_not_break_the_server(fake: FakeCustomerIO) -> None:
    # GIVEN a client that announces 1000 bytes and sends 10 before going away
    request = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10

    # WHEN it disconnects
    raw_exchange(fake, request, read=False)

    # THEN the server keeps serving and the half request is not recorded as a call
    assert pipelines(fake, "/v1/identify", {"userId": "u1"}).status == 200
    assert fake.wait_for(lambda: fake.request_count == 1, timeout=1.0)
    assert [r.path for r in fake.requests] == ["/v1/identify"]


def test_client_disconnect_during_slow_response_does_not_break_the_server(fake: FakeCustomerIO) -> None:
    # GIVEN a slow answer and a client that gives up early
    fake.fail("/v1/identify", Fault(status=500, delay=0.3))
    conn = http.client.HTTPConnection(fake.host, fake.pipelines_port, timeout=0.05)
    with pytest.raises(TimeoutError):
        pipelines(fake, "/v1/identify", {"userId": "u1"}, conn=conn)
    conn.close()

    # WHEN the server later writes to the closed socket
    time.sleep(0.4)

    # THEN it is still healthy
    assert pipelines(fake, "/v1/identify", {"userId": "u2"}).status == 200


def test_recorded_request_fields(fake: FakeCustomerIO) -> None:
    # GIVEN a strict track call with a query string and custom headers
    before = time.time()
    pipelines(
        fake,
        "/v1/track?debug=1&empty=",
        {"userId": "u1", "event": "E"},
        headers={"X-Request-Id": "abc"},
    )

    # WHEN the record is read
    (record,) = fake.requests

    # THEN every field reflects what was sent and answered
    assert isinstance(record, RecordedRequest)
    assert record.method == "POST"
    assert record.path == "/v1/track"
    assert record.query == {"debug": "1", "empty": ""}
    assert record.headers["x-request-id"] == "abc"
    assert record.headers["x-strict-mode"] == "1"
    assert json.loads(record.body) == {"userId": "u1", "event": "E"}
    assert record.json == {"userId": "u1", "event": "E"}
    assert (record.status, record.fault, record.strict, record.dropped, record.error) == (
        200,
        None,
        True,
        False,
        None,
    )
    assert before <= record.received_at <= time.time()
    with pytest.raises(AttributeError):
        record.status = 500  # type: ignore[misc]


def test_inspection_helpers_return_copies(fake: FakeCustomerIO) -> None:
    # GIVEN one accepted call and one email
    pipelines(fake, "/v1/identify", {"userId": "u1"})
    app(fake, "POST", "/v1/send/email", valid_email())

    # WHEN the returned lists are mutated
    fake.requests.clear()
    fake.emails.clear()
    fake.faults_injected["x"] = 1

    # THEN the fake's own records are untouched
    assert fake.request_count == 2
    assert len(fake.emails) == 1
    assert fake.faults_injected == {}


# --- Track API ---------------------------------------------------------------------------------------

ULID = "01HZX3K4M5N6P7Q8R9S0T1V2W3"


def track(
    fake: FakeCustomerIO, method: str, path: str, payload: Any = None, *, auth: str | None = TRACK_AUTH
) -> Reply:
    return send(fake, method, path, payload, headers={"Authorization": auth} if auth else {})


@pytest.mark.parametrize(
    "auth",
    [None, PIPELINES_AUTH, basic(SITE_ID, "wrong"), f"Bearer {TRACK_KEY}", APP_AUTH],
    ids=["missing", "pipelines-key", "wrong-key", "bearer", "app-key"],
)
def test_track_needs_basic_site_id_and_track_key(fake: FakeCustomerIO, auth: str | None) -> None:
    # GIVEN a Track call with anything but Basic site_id:track_api_key
    # WHEN it is sent to the Track listener
    reply = track(fake, "PUT", "/api/v1/customers/u1", {"plan": "pro"}, auth=auth)

    # THEN 401, and no person was made
    assert (reply.status, reply.body) == (401, {"meta": {"error": "Unauthorized request"}})
    assert fake.track_calls() == []
    assert fake.workspace.find("id", "u1") is None


def test_track_v1_identify_event_and_delete(fake: FakeCustomerIO) -> None:
    # GIVEN a person identified by id through Track v1
    identify = track(fake, "PUT", "/api/v1/customers/u%2F1", {"email": "u1@example.com", "plan": "pro"})
    event = track(
        fake,
        "POST",
        "/api/v1/customers/u%2F1/events",
        {"name": "purchase", "data": {"price": 23.45}, "timestamp": 1_700_000_000, "id": ULID},
    )
    page = track(fake, "POST", "/api/v1/customers/u%2F1/events", {"name": "/pricing", "type": "page"})

    # THEN each answers 200 {} and is recorded as the v2 operation it amounts to
    assert [(r.status, r.body) for r in (identify, event, page)] == [(200, {})] * 3
    person = {"type": "person", "identifiers": {"id": "u/1"}}
    assert fake.track_calls() == [
        {
            **person,
            "via": "/api/v1/customers/{id}",
            "action": "identify",
            "attributes": {"email": "u1@example.com", "plan": "pro"},
        },
        {
            **person,
            "via": "/api/v1/customers/{id}/events",
            "action": "event",
            "name": "purchase",
            "id": ULID,
            "timestamp": 1_700_000_000,
            "attributes": {"price": 23.45},
        },
        {
            **person,
            "via": "/api/v1/customers/{id}/events",
            "action": "page",
            "name": "/pricing",
            "attributes": {},
        },
    ]
    assert (fake.workspace.find("id", "u/1") or {}).get("email") == "u1@example.com"

    # WHEN the person is deleted by email (percent-encoded, as the SDKs send it)
    gone = track(fake, "DELETE", "/api/v1/customers/u1%40example.com")

    # THEN 200 {} and the person is gone
    assert (gone.status, gone.body) == (200, {})
    assert fake.workspace.find("id", "u/1") is None
    assert fake.track_calls()[-1] == {
        "type": "person",
        "identifiers": {"email": "u1@example.com"},
        "via": "/api/v1/customers/{id}",
        "action": "delete",
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"data": {}}, "name is required"),
        ({"name": "  "}, "name is required"),
        (
            {"name": "x", "timestamp": "2024-01-01T00:00:00Z"},
            "timestamp must be a unix timestamp (integer seconds)",
        ),
        ({"name": "x", "id": "not-a-ulid"}, "id must be a valid ULID"),
        ({"name": "x", "type": "click"}, "type must be one of event, page, screen"),
        ([], "request body must be a JSON object"),
    ],
)
def test_track_v1_event_validation(fake: FakeCustomerIO, payload: Any, message: str) -> None:
    reply = track(fake, "POST", "/api/v1/customers/u1/events", payload)
    assert (reply.status, reply.body) == (400, {"meta": {"errors": [message]}})
    assert fake.track_calls() == []


def test_track_v1_data_over_journeys_limits_is_answered_200_and_dropped(fake: FakeCustomerIO) -> None:
    # GIVEN a 151-byte identifier, a 101-byte event name and a 1001-byte attribute
    replies = [
        track(fake, "PUT", "/api/v1/customers/" + "u" * 151, {"plan": "pro"}),
        track(fake, "POST", "/api/v1/customers/u1/events", {"name": "e" * 101}),
        track(fake, "PUT", "/api/v1/customers/u1", {"bio": "x" * 1001}),
    ]

    # THEN Track answers 200 to each, and none of it reaches the workspace
    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.dropped for r in fake.requests] == [True, True, True]
    assert fake.track_calls() == []
    assert fake.workspace.find("id", "u1") is None


def test_track_v2_batch_reports_refused_items_in_a_207_and_keeps_the_others(fake: FakeCustomerIO) -> None:
    # GIVEN a v2 batch of five operations, two of them invalid and one over Journeys' limits
    batch = [
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify", "attributes": {"plan": "pro"}},
        {"type": "person", "identifiers": {"id": "a"}, "action": "event", "id": ULID, "timestamp": 1},
        {"type": "person", "identifiers": {"id": "a", "email": "a@x"}, "action": "identify"},
        {"type": "person", "identifiers": {"id": "a"}, "action": "event", "name": "e" * 101},
        {"type": "person", "identifiers": {"id": "a"}, "action": "page", "name": "/home", "timestamp": 2},
    ]

    # WHEN it is sent
    reply = track(fake, "POST", "/api/v2/batch", {"batch": batch})

    # THEN 207 names each refused item by index; the rest are kept
    assert reply.status == 207
    assert [(e["batch_index"], e["field"]) for e in reply.body["errors"]] == [
        (1, "name"),
        (2, "identifiers"),
        (3, ""),
    ]
    assert all(e["reason"] and e["message"] for e in reply.body["errors"])
    assert [(op["action"], op.get("name")) for op in fake.track_calls()] == [
        ("identify", None),
        ("page", "/home"),
    ]
    assert fake.requests[0].rejected == frozenset({1, 2, 3})
    assert fake.dropped == fake.requests
    assert fake.workspace.find("id", "a") is not None


def test_track_v2_entity_and_batch_answer_200_when_every_item_is_valid(fake: FakeCustomerIO) -> None:
    # GIVEN valid person and object operations
    person = {
        "type": "person",
        "identifiers": {"email": "b@example.com"},
        "action": "identify",
        "attributes": {},
    }
    company = {
        "type": "object",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "action": "add_relationships",
        "cio_relationships": [{"identifiers": {"id": "b"}}],
    }
    merge = {
        "type": "person",
        "action": "merge",
        "primary": {"email": "b@example.com"},
        "secondary": {"id": "user-1"},
    }

    # WHEN they are sent one by one and as a batch
    replies = [
        track(fake, "POST", "/api/v2/entity", person),
        track(fake, "POST", "/api/v2/batch", {"batch": [company, merge]}),
    ]

    # THEN 200 {} each, and the merge removed the secondary person
    assert [(r.status, r.body) for r in replies] == [(200, {}), (200, {})]
    assert [op["action"] for op in fake.track_calls()] == ["identify", "add_relationships", "merge"]
    assert fake.workspace.find("id", "user-1") is None


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/api/v2/entity", {"type": "person", "identifiers": {}, "action": "identify"}, 400, "identifiers"),
        ("/api/v2/entity", {"type": "person", "identifiers": {"id": "a"}, "action": "fly"}, 400, "action"),
        ("/api/v2/entity", {"type": "thing", "identifiers": {"id": "a"}, "action": "identify"}, 400, "type"),
        ("/api/v2/batch", {"batch": []}, 400, "batch"),
        ("/api/v2/batch", [], 400, "batch"),
    ],
)
def test_track_v2_refuses_an_invalid_request_whole(
    fake: FakeCustomerIO, path: str, payload: Any, status: int, field: str
) -> None:
    reply = track(fake, "POST", path, payload)
    assert reply.status == status
    (error,) = reply.body["errors"]
    assert error["field"] == field
    assert fake.track_calls() == []


def test_track_v2_item_over_32_kb_is_refused_in_the_207(fake: FakeCustomerIO) -> None:
    big = {
        "type": "person",
        "identifiers": {"id": "a"},
        "action": "identify",
        "attributes": padded_traits(33_000),
    }
    small = {"type": "person", "identifiers": {"id": "b"}, "action": "identify", "attributes": {}}
    reply = track(fake, "POST", "/api/v2/batch", {"batch": [small, big]})
    assert reply.status == 207
    assert [e["batch_index"] for e in reply.body["errors"]] == [1]
    assert [op["identifiers"] for op in fake.track_calls()] == [{"id": "b"}]


def test_faults_can_be_queued_on_a_track_route(fake: FakeCustomerIO) -> None:
    # GIVEN a 503 queued on every person's identify route
    fake.fail("/api/v1/customers/{id}", Fault(status=503))

    # WHEN two identifies are sent
    first = track(fake, "PUT", "/api/v1/customers/a", {})
    second = track(fake, "PUT", "/api/v1/customers/b", {})

    # THEN the first took the fault, the second went through
    assert (first.status, second.status) == (503, 200)
    assert [op["identifiers"] for op in fake.track_calls()] == [{"id": "b"}]


# --- push and SMS ------------------------------------------------------------------------------------


def test_send_push_and_sms_return_delivery_ids_and_are_recorded_by_channel(fake: FakeCustomerIO) -> None:
    # GIVEN a push with every documented option and an SMS
    push = {
        "transactional_message_id": "order_shipped",
        "identifiers": {"cio_id": "a1b2c3d4e5f60001"},
        "to": "last_used",
        "title": "Shipped",
        "message": "Your order is on its way",
        "image_url": "https://example.com/i.png",
        "link": "app://orders/1",
        "sound": "none",
        "custom_data": {"order": "1"},
        "custom_device": {"token": "t", "platform": "ios"},
        "custom_payload": {"ios": {}, "android": {}},
        "language": "fr",
        "message_data": {"n": 1},
        "disable_message_retention": True,
        "send_to_unsubscribed": False,
        "queue_draft": False,
    }
    sms = {
        "transactional_message_id": 7,
        "identifiers": {"id": "user-1"},
        "to": "+15551234567",
        "from": "+15557654321",
        "tracked": False,
    }

    # WHEN both are sent
    replies = [app(fake, "POST", "/v1/send/push", push), app(fake, "POST", "/v1/send/sms", sms)]

    # THEN each answers like email and lands under its channel
    assert [r.status for r in replies] == [200, 200]
    assert all(r.body["delivery_id"] and isinstance(r.body["queued_at"], int) for r in replies)
    assert [s["channel"] for s in fake.sends()] == ["push", "sms"]
    assert fake.sends("push")[0]["json"] == push
    assert fake.emails == []


@pytest.mark.parametrize(
    ("path", "payload", "message"),
    [
        ("/v1/send/push", {"identifiers": {"id": "u"}}, "transactional_message_id is required"),
        ("/v1/send/push", {"transactional_message_id": 1}, "identifiers must be an object"),
        (
            "/v1/send/push",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "sound": "loud"},
            "sound must be one of default, none",
        ),
        (
            "/v1/send/push",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "to": ""},
            "to must be all, last_used or a device token",
        ),
        (
            "/v1/send/push",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "custom_payload": {"web": {}}},
            "custom_payload may only have ios and android",
        ),
        (
            "/v1/send/push",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "custom_data": "x"},
            "custom_data must be an object",
        ),
        (
            "/v1/send/push",
            {"transactional_message_id": True, "identifiers": {"id": "u"}},
            "transactional_message_id must be an integer or a trigger name",
        ),
        ("/v1/send/sms", {"transactional_message_id": 1, "identifiers": {"id": "u"}}, "to is required"),
        (
            "/v1/send/sms",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "to": "+1", "tracked": "yes"},
            "tracked must be a boolean",
        ),
        (
            "/v1/send/sms",
            {"transactional_message_id": 1, "identifiers": {"id": "u"}, "to": "+1", "queue_draft": 1},
            "queue_draft must be a boolean",
        ),
    ],
)
def test_send_push_and_sms_validation(fake: FakeCustomerIO, path: str, payload: Any, message: str) -> None:
    reply = app(fake, "POST", path, payload)
    assert reply.status == 400
    assert reply.body["meta"]["error"].startswith(message)
    assert fake.sends() == []


def test_rate_limit_answers_429_beyond_the_requests_of_each_window(fake: FakeCustomerIO) -> None:
    # GIVEN at most 2 Pipelines requests a second, on a clock the test drives
    now = [0.0]
    fake.rate_limit(2, 1.0, paths=["/v1/identify"], retry_after="1", clock=lambda: now[0])

    # WHEN 3 requests come in one second, 1 in the next, and one on another path
    first = [pipelines(fake, "/v1/identify", {"userId": f"u{i}"}) for i in range(3)]
    now[0] = 1.2
    second = pipelines(fake, "/v1/identify", {"userId": "u3"})
    other = pipelines(fake, "/v1/track", {"userId": "u4", "event": "e"})
    fake.rate_limit(None)
    lifted = [pipelines(fake, "/v1/identify", {"userId": "u5"}).status for _ in range(3)]

    # THEN the third of the first second got 429 with Retry-After, and nothing of it was kept
    assert [r.status for r in first] == [200, 200, 429]
    assert first[2].headers["retry-after"] == "1"
    assert (second.status, other.status, lifted) == (200, 200, [200, 200, 200])
    assert fake.faults_injected == {"rate_limited": 1}
    assert "u2" not in {c["userId"] for c in fake.pipelines_calls()}
