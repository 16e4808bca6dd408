"""PipelinesClient against the fake Customer.io: wire format of every call, validation, /v1/batch packing."""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
from cio_relay import USER_AGENT
from cio_relay.cio import CustomerIO, build_customerio
from cio_relay.cio.pipelines import PipelinesClient, batch_body, encode, pack
from cio_relay.errors import ConfigurationError, InvalidRequest, PayloadTooLarge, Retryable
from cio_relay.models.pipelines import MAX_BATCH_BYTES, MAX_CALL_BYTES, Identify, Track
from cio_relay.settings import load_settings

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, PIPELINES_KEY

KB = 1024
PIPELINES_AUTH = "Basic " + base64.b64encode(f"{PIPELINES_KEY}:".encode()).decode()


def customerio(fake: FakeCustomerIO, **env: str) -> CustomerIO:
    """The real client, pointed at the fake through the URL overrides, with local credentials."""
    environ = {
        "CUSTOMERIO_PIPELINES_URL": fake.pipelines_url,
        "CUSTOMERIO_APP_URL": fake.app_url,
        "CUSTOMERIO_PIPELINES_API_KEY": PIPELINES_KEY,
        "CUSTOMERIO_APP_TOKEN": APP_KEY,
        **env,
    }
    return build_customerio(load_settings({k: v for k, v in environ.items() if v}))


@pytest.fixture
def pipelines(fake_cio: FakeCustomerIO) -> PipelinesClient:
    return customerio(fake_cio).pipelines


def call_of_size(size: int, index: int = 0) -> dict[str, Any]:
    """A valid track call whose compact JSON is exactly `size` bytes."""
    call: dict[str, Any] = {
        "type": "track",
        "userId": f"user-{index}",
        "event": "padded",
        "messageId": f"m-{index:05d}",
        "properties": {"pad": ""},
    }
    call["properties"]["pad"] = "x" * (size - len(encode(call)))
    assert len(encode(call)) == size
    return call


# --- one call per endpoint -----------------------------------------------------------------------

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("identify", {"userId": "u1", "messageId": "m-1", "traits": {"email": "ada@example.com", "plan": "pro"}}),
    ("track", {"userId": "u1", "messageId": "m-2", "event": "signed_up", "properties": {"plan": "pro"}}),
    ("page", {"anonymousId": "a1", "messageId": "m-3", "name": "Pricing", "properties": {"path": "/p"}}),
    ("screen", {"userId": "u1", "messageId": "m-4", "name": "Home"}),
    ("group", {"userId": "u1", "messageId": "m-5", "groupId": "acme", "traits": {"name": "Acme"}}),
    ("alias", {"userId": "u1", "messageId": "m-6", "previousId": "a1"}),
]


@pytest.mark.parametrize(("operation", "call"), CALLS)
def test_pipelines_call_wire_format(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO, operation: str, call: dict[str, Any]
) -> None:
    # GIVEN a valid call of each type
    send: Callable[[dict[str, Any]], None] = getattr(pipelines, operation)

    # WHEN the client sends it
    send(call)

    # THEN exactly one POST /v1/<type> goes out with Basic auth, strict mode and the exact JSON body
    (received,) = fake_cio.requests
    assert received.method == "POST"
    assert received.path == f"/v1/{operation}"
    assert received.query == {}
    assert received.headers["authorization"] == PIPELINES_AUTH
    assert received.headers["x-strict-mode"] == "1"
    assert received.headers["user-agent"] == USER_AGENT
    assert received.headers["content-type"] == "application/json"
    assert received.json == {**call, "type": operation}
    # AND Customer.io accepted it in strict mode
    assert received.accepted
    assert received.strict


def test_pipelines_delete_person_is_a_user_deleted_track(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a person to delete and the messageId the relay chose for it
    # WHEN the client deletes the person
    pipelines.delete_person("user-9", "m-del-1")

    # THEN Customer.io receives the `User Deleted` semantic event on /v1/track, not a DELETE
    (received,) = fake_cio.requests
    assert (received.method, received.path) == ("POST", "/v1/track")
    assert received.headers["x-strict-mode"] == "1"
    assert received.json == {
        "type": "track",
        "userId": "user-9",
        "event": "User Deleted",
        "messageId": "m-del-1",
    }


def test_pipelines_batch_wire_format(pipelines: PipelinesClient, fake_cio: FakeCustomerIO) -> None:
    # GIVEN calls as dicts and as models
    calls: list[Any] = [
        {"type": "identify", "userId": "u1", "messageId": "m-1"},
        Track(userId="u1", event="e1", messageId="m-2"),
        {"type": "alias", "previousId": "a1", "userId": "u1", "messageId": "m-3"},
        Identify(anonymousId="a2", messageId="m-4", traits={"x": 1}),
    ]

    # WHEN they are sent as a batch
    requests = pipelines.batch(calls)

    # THEN one POST /v1/batch carries them all, in order, each with its type
    assert requests == 1
    (received,) = fake_cio.requests
    assert (received.method, received.path) == ("POST", "/v1/batch")
    assert received.headers["authorization"] == PIPELINES_AUTH
    assert received.headers["x-strict-mode"] == "1"
    assert received.json == {
        "batch": [
            {"type": "identify", "userId": "u1", "messageId": "m-1"},
            {"type": "track", "userId": "u1", "event": "e1", "messageId": "m-2"},
            {"type": "alias", "previousId": "a1", "userId": "u1", "messageId": "m-3"},
            {"type": "identify", "anonymousId": "a2", "messageId": "m-4", "traits": {"x": 1}},
        ]
    }
    assert received.accepted


def test_pipelines_never_sends_the_track_credential(fake_cio: FakeCustomerIO) -> None:
    # GIVEN only site_id + track_api_key (Track API credentials, which Pipelines refuses)
    client = customerio(
        fake_cio,
        CUSTOMERIO_PIPELINES_API_KEY="",
        CUSTOMERIO_SITE_ID="site-1",
        CUSTOMERIO_TRACK_TOKEN="track-1",
    )

    # WHEN a Pipelines call is attempted / THEN it fails naming the missing key; nothing is sent
    with pytest.raises(ConfigurationError, match="pipelines_api_key"):
        client.pipelines.identify({"userId": "u1", "messageId": "m-1"})
    assert fake_cio.requests == []
    # AND identities and events go to the Track API instead
    assert client.events_backend() is client.track


def test_pipelines_key_wins_over_site_id_pair(fake_cio: FakeCustomerIO) -> None:
    # GIVEN both a Pipelines key and the site_id pair / WHEN a call is sent / THEN the Pipelines key is used
    client = customerio(fake_cio, CUSTOMERIO_SITE_ID="site-1", CUSTOMERIO_TRACK_TOKEN="track-1")
    client.pipelines.track({"userId": "u1", "event": "e", "messageId": "m-1"})
    assert fake_cio.requests[0].headers["authorization"] == PIPELINES_AUTH


def test_pipelines_region_eu_with_url_override_still_uses_the_override(fake_cio: FakeCustomerIO) -> None:
    # GIVEN CUSTOMERIO_REGION=eu and a Pipelines URL override
    client = customerio(fake_cio, CUSTOMERIO_REGION="eu")

    # WHEN a call is sent / THEN it reaches the override (the local fake), not cdp-eu.customer.io
    client.pipelines.page({"userId": "u1", "messageId": "m-1"})
    assert fake_cio.requests[0].path == "/v1/page"


def test_pipelines_message_id_is_kept_when_the_same_call_is_sent_again(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN Customer.io fails the first attempt
    fake_cio.fail("/v1/track", Fault(status=503))
    call = {"userId": "u1", "event": "paid", "messageId": "m-keep"}
    with pytest.raises(Retryable):
        pipelines.track(call)

    # WHEN the same call is sent again
    pipelines.track(call)

    # THEN both attempts carry the same bytes, messageId included
    first, second = fake_cio.requests
    assert first.body == second.body
    assert second.json["messageId"] == "m-keep"
    assert [c["messageId"] for c in fake_cio.pipelines_calls()] == ["m-keep"]


# --- validation before any request ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "call", "field"),
    [
        ("identify", {"traits": {"plan": "pro"}}, "userId"),
        ("identify", {"userId": ""}, "userId"),
        ("page", {"name": "home"}, "userId"),
        ("screen", {"name": "home"}, "userId"),
        ("track", {"userId": "u1"}, "event"),
        ("track", {"userId": "u1", "event": ""}, "event"),
        ("track", {"event": "signed_up"}, "userId"),
        ("group", {"userId": "u1"}, "groupId"),
        ("alias", {"userId": "u1"}, "previousId"),
        ("alias", {"previousId": "a1"}, "userId"),
    ],
)
def test_pipelines_invalid_call_is_rejected_before_any_request(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO, operation: str, call: dict[str, Any], field: str
) -> None:
    # GIVEN a call that breaks one of Customer.io's rules
    send: Callable[[dict[str, Any]], None] = getattr(pipelines, operation)

    # WHEN the client is asked to send it
    with pytest.raises(InvalidRequest) as caught:
        send(call)

    # THEN it refuses, naming the field, and Customer.io received nothing
    assert caught.value.field == field
    assert fake_cio.requests == []


def test_pipelines_send_unknown_type_names_the_type_field(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pipelines.send({"type": "shout", "userId": "u1"})
    assert caught.value.field == "type"
    assert fake_cio.requests == []


def test_pipelines_call_over_32_kb_is_rejected_before_any_request(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a call one byte over 32 KB (Customer.io would answer 200 and drop it)
    call = call_of_size(MAX_CALL_BYTES + 1)

    # WHEN the client is asked to send it
    with pytest.raises(PayloadTooLarge) as caught:
        pipelines.track(call)

    # THEN it refuses with a size error naming the body, and nothing was sent
    assert caught.value.field == "body"
    assert caught.value.status == 413
    assert fake_cio.requests == []


def test_pipelines_call_of_exactly_32_kb_is_sent(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    pipelines.track(call_of_size(MAX_CALL_BYTES))
    assert fake_cio.requests[0].accepted


def test_pipelines_batch_with_one_invalid_call_sends_nothing(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a batch whose second call has no identity
    calls = [{"type": "identify", "userId": "u1"}, {"type": "page", "name": "home"}]

    # WHEN it is sent
    with pytest.raises(InvalidRequest) as caught:
        pipelines.batch(calls)

    # THEN the error names the item and field, and nothing was sent
    assert caught.value.field == "batch.1.userId"
    assert fake_cio.requests == []


def test_pipelines_batch_with_an_oversized_call_late_in_it_sends_nothing(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN 100 calls of 20 KB (several requests' worth) whose 61st is over 32 KB
    calls = [call_of_size(20 * KB, i) for i in range(100)]
    calls[60] = call_of_size(MAX_CALL_BYTES + 1, 60)

    # WHEN they are sent
    with pytest.raises(PayloadTooLarge) as caught:
        pipelines.batch(calls)

    # THEN it fails before the first request: no half-sent batch to retry
    assert caught.value.field == "batch.60"
    assert fake_cio.requests == []


# --- pack: 32 KB per call, 500 KB per request, order kept, as few requests as possible ---------------


def test_pack_puts_many_small_calls_in_one_request() -> None:
    encoded = [encode({"type": "track", "userId": f"u{i}", "event": "e"}) for i in range(100)]
    assert list(pack(encoded)) == [list(range(100))]


def test_pack_of_nothing_is_no_request() -> None:
    assert list(pack([])) == []


@pytest.mark.parametrize("count", [1, 24, 25, 100, 240])
def test_pack_20_kb_calls_into_the_fewest_requests(count: int) -> None:
    # GIVEN `count` calls of 20 KB each
    encoded = [encode(call_of_size(20 * KB, i)) for i in range(count)]

    # WHEN they are packed
    groups = list(pack(encoded))

    # THEN they fill as few requests as 500 KB allows, in order, none over the limit
    assert len(groups) == math.ceil(count * 20 * KB / MAX_BATCH_BYTES)
    assert [i for group in groups for i in group] == list(range(count))
    for group in groups:
        assert len(batch_body(encoded[i] for i in group)) <= MAX_BATCH_BYTES
    # AND no request could have taken the next call too (the packing is greedy)
    for group, following in itertools.pairwise(groups):
        assert len(batch_body(encoded[i] for i in [*group, following[0]])) > MAX_BATCH_BYTES


def test_pack_fills_a_request_to_exactly_500000_bytes() -> None:
    # GIVEN calls whose batch body is exactly 500000 bytes
    calls = [encode(call_of_size(25_000, i)) for i in range(19)]
    envelope = len(batch_body(calls)) + 1  # + the comma before one more call
    calls.append(encode(call_of_size(MAX_BATCH_BYTES - envelope, 19)))
    assert len(batch_body(calls)) == MAX_BATCH_BYTES

    # WHEN packed / THEN they make one request
    assert list(pack(calls)) == [list(range(20))]

    # AND one byte more makes two
    calls[-1] = encode(call_of_size(MAX_BATCH_BYTES - envelope + 1, 19))
    assert list(pack(calls)) == [list(range(19)), [19]]


def test_pack_call_over_32_kb_names_it() -> None:
    encoded = [encode(call_of_size(100, 0)), encode(call_of_size(MAX_CALL_BYTES + 1, 1))]
    with pytest.raises(PayloadTooLarge) as caught:
        list(pack(encoded))
    assert caught.value.field == "batch.1"


def test_pack_max_calls_limits_calls_per_request() -> None:
    encoded = [encode({"type": "identify", "userId": f"u{i}"}) for i in range(7)]
    assert list(pack(encoded, max_calls=3)) == [[0, 1, 2], [3, 4, 5], [6]]


# --- PipelinesClient.batch through the fake ---------------------------------------------------------


def test_pipelines_batch_of_100_small_calls_is_one_request(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    calls = [{"type": "track", "userId": f"u{i}", "event": "e", "messageId": f"m-{i}"} for i in range(100)]

    assert pipelines.batch(calls) == 1
    assert fake_cio.request_count == 1
    assert [c["messageId"] for c in fake_cio.pipelines_calls()] == [f"m-{i}" for i in range(100)]


def test_pipelines_batch_of_20_kb_calls_splits_within_customerio_limits(
    pipelines: PipelinesClient, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN 100 calls of 20 KB (2 MB in all)
    calls = [call_of_size(20 * KB, i) for i in range(100)]

    # WHEN they are sent as a batch
    requests = pipelines.batch(calls)

    # THEN ceil(100 * 20 KB / 500 KB) = 5 requests, each accepted by Customer.io's size checks
    assert requests == 5 == math.ceil(100 * 20 * KB / MAX_BATCH_BYTES)
    received = fake_cio.requests
    assert len(received) == 5
    assert all(r.path == "/v1/batch" and r.accepted for r in received)
    assert all(len(r.body) <= MAX_BATCH_BYTES for r in received)
    # AND every call arrived once, in order
    assert [c["messageId"] for c in fake_cio.pipelines_calls()] == [c["messageId"] for c in calls]
