"""EventsFunction with Track API credentials (site_id + track_api_key, no Pipelines key).

Calls accepted by the API (or written to EventsQueue) are delivered through the fake's Track listener:
v2 `/api/v2/batch` packed like /v1/batch, v1 `/api/v1/events` for anonymous events.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest
import ulid
from cio_relay.settings import load_settings

from local_stack.customerio import FakeCustomerIO, Fault
from tests.conftest import APP_KEY, PIPELINES_KEY, Stack, wire_stack
from tests.integration import call_api, poll, receive_all, send_bodies
from tests.integration import configure as set_parameters
from tests.support import LambdaContext, api_event

Configure = Callable[..., None]
BATCH = "/api/v2/batch"


def track_secret(fake: FakeCustomerIO) -> dict[str, str]:
    return {"site_id": str(fake.site_id), "track_api_key": str(fake.track_api_key), "app_api_key": APP_KEY}


@pytest.fixture
def stack(aws: None, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """moto + the fake, with a secret that holds Track API credentials and no Pipelines key."""
    return wire_stack(monkeypatch, fake_cio, secret=track_secret(fake_cio))


@pytest.fixture
def configure(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Configure:
    return functools.partial(set_parameters, monkeypatch)


def post(path: str, call: dict[str, Any], context: LambdaContext) -> str:
    answer = call_api(api_event("POST", path, call), context)
    assert answer.status == 200, answer.body
    return str(answer.body["call_ids"][0])


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    return receive_all(stack, stack.events_dlq_url)


def reason(message: dict[str, Any]) -> str:
    return str(message["MessageAttributes"]["FailureReason"]["StringValue"])


def test_calls_go_to_the_track_api_in_one_v2_batch_with_track_auth(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an identify, a track, a page and a deletion accepted by the API
    post("/v1/identify", {"userId": "u1", "traits": {"plan": "pro"}}, lambda_context)
    event_id = post(
        "/v1/track", {"userId": "u1", "event": "paid", "properties": {"amount": 3}}, lambda_context
    )
    post("/v1/page", {"userId": "u1", "name": "Pricing"}, lambda_context)
    deletion = api_event(
        "DELETE", "/v1/customers/u2", resource="/v1/customers/{id}", path_parameters={"id": "u2"}
    )
    assert call_api(deletion, lambda_context).status == 200

    # WHEN EventsQueue is polled
    result = poll(stack, lambda_context)

    # THEN one Track v2 batch carried all four, with Basic site_id:track_api_key; Pipelines got nothing
    assert result.failed_ids == []
    [request] = fake_cio.requests
    assert (request.api, request.method, request.path, request.status) == ("track", "POST", BATCH, 200)
    pair = f"{fake_cio.site_id}:{fake_cio.track_api_key}".encode()
    assert request.headers["authorization"] == "Basic " + base64.b64encode(pair).decode()
    kept = {(c["action"], c["identifiers"].get("id")): c for c in fake_cio.track_calls()}
    assert set(kept) == {("identify", "u1"), ("event", "u1"), ("page", "u1"), ("delete", "u2")}
    assert kept[("identify", "u1")]["attributes"] == {"plan": "pro"}
    paid = kept[("event", "u1")]
    assert (paid["name"], paid["attributes"]) == ("paid", {"amount": 3})
    assert isinstance(paid["timestamp"], int)
    assert str(ulid.ULID.from_str(paid["id"])) == paid["id"]
    assert paid["id"] != event_id  # a ULID derived from the messageId, not the messageId itself
    assert kept[("page", "u1")]["name"] == "Pricing"
    # AND the deleted person is gone from the workspace
    assert dead_letters(stack) == []


def test_anonymous_event_goes_to_the_v1_anonymous_events_endpoint(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an anonymous track call
    post("/v1/track", {"anonymousId": "anon-1", "event": "viewed", "properties": {"k": "v"}}, lambda_context)

    # WHEN it is delivered / THEN it went to POST /api/v1/events with its anonymous_id
    assert poll(stack, lambda_context).failed_ids == []
    [request] = fake_cio.requests
    assert (request.path, request.status) == ("/api/v1/events", 200)
    assert request.json["anonymous_id"] == "anon-1"
    assert (request.json["name"], request.json["data"]) == ("viewed", {"k": "v"})


def test_event_id_is_the_same_on_every_retry(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN an event whose first delivery fails with 503
    configure(RETRY_BASE_SECONDS="0", RETRY_CAP_SECONDS="0")
    post("/v1/track", {"userId": "u1", "event": "paid"}, lambda_context)
    fake_cio.fail(BATCH, Fault(status=503))

    # WHEN it is delivered twice
    poll(stack, lambda_context)
    poll(stack, lambda_context)

    # THEN both requests carried the same event id and timestamp; Customer.io kept it once
    sent = [r.json["batch"][0] for r in fake_cio.requests_to(BATCH)]
    assert [r.status for r in fake_cio.requests_to(BATCH)] == [503, 200]
    assert sent[0]["id"] == sent[1]["id"]
    assert sent[0]["timestamp"] == sent[1]["timestamp"]
    assert len(fake_cio.track_calls()) == 1


def test_207_dead_letters_exactly_the_refused_items_and_delivers_the_rest(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext, configure: Configure
) -> None:
    # GIVEN the edge checks off, so a 101-byte event name reaches Customer.io, inside a queue message of
    # three calls, and a second message
    configure(JOURNEYS_LIMITS_POLICY="off")
    batch = {
        "batch": [{"type": "identify", "userId": "u1"}, {"type": "track", "userId": "u1", "event": "e" * 101}]
    }
    send_bodies(stack, stack.events_queue_url, [batch, {"type": "identify", "userId": "u2"}])

    # WHEN they are delivered
    result = poll(stack, lambda_context)

    # THEN Customer.io answered 207 naming the event; the identifies count as delivered
    [request] = fake_cio.requests_to(BATCH)
    assert request.status == 207
    assert result.failed_ids == []
    assert sorted(c["identifiers"]["id"] for c in fake_cio.track_calls()) == ["u1", "u2"]
    # AND the dead-letter copy holds only the refused call, with Customer.io's reason
    [dead] = dead_letters(stack)
    assert [c.get("event") for c in json.loads(dead["Body"])["batch"]] == ["e" * 101]
    assert "refused item" in reason(dead)
    assert dead["MessageAttributes"]["FailureStatus"]["StringValue"] == "207"


def test_call_without_a_track_equivalent_is_dead_lettered_naming_the_backend(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an identify by anonymousId alone (Track identifies people by id, email or cio_id)
    post("/v1/identify", {"anonymousId": "anon-1", "traits": {"plan": "pro"}}, lambda_context)

    # WHEN it is handled / THEN nothing is sent and it is dead-lettered with the reason
    assert poll(stack, lambda_context).failed_ids == []
    assert fake_cio.requests == []
    [dead] = dead_letters(stack)
    assert "Track API cannot identify a person by anonymousId alone" in reason(dead)


def test_device_events_are_tracks_device_operations_accepted_by_the_v2_batch(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN a device registered and another deleted through the Pipelines device semantic events
    device = {"context": {"device": {"token": "tok-1", "type": "ios"}}, "properties": {"app_version": "2.1"}}
    post("/v1/track", {"userId": "u1", "event": "Device Created or Updated", **device}, lambda_context)
    gone = {"context": {"device": {"token": "tok-0"}}}
    post("/v1/track", {"userId": "u1", "event": "Device Deleted", **gone}, lambda_context)

    # WHEN they are delivered
    assert poll(stack, lambda_context).failed_ids == []

    # THEN one v2 batch carried add_device and delete_device, both accepted (200, not 207)
    [request] = fake_cio.requests_to(BATCH)
    assert request.status == 200
    sent = {c["action"]: c["device"] for c in request.json["batch"]}
    assert sent["add_device"]["token"] == "tok-1"
    assert (sent["add_device"]["platform"], sent["add_device"]["attributes"]) == (
        "ios",
        {"app_version": "2.1"},
    )
    assert isinstance(sent["add_device"]["last_used"], int)
    assert sent["delete_device"] == {"token": "tok-0"}
    assert dead_letters(stack) == []


def test_semantic_event_without_a_track_equivalent_is_dead_lettered_naming_the_backend(
    stack: Stack, fake_cio: FakeCustomerIO, lambda_context: LambdaContext
) -> None:
    # GIVEN an object deletion, which Pipelines has and Track has not as an event
    post(
        "/v1/track",
        {"userId": "u1", "event": "Object Deleted", "properties": {"objectId": "o"}},
        lambda_context,
    )

    # WHEN it is handled / THEN nothing is sent and the dead-letter's reason names the backend and the event
    assert poll(stack, lambda_context).failed_ids == []
    assert fake_cio.requests == []
    [dead] = dead_letters(stack)
    assert "the Track API has no equivalent of the semantic event 'Object Deleted'" in reason(dead)


def test_both_credentials_use_pipelines(
    aws: None, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch, lambda_context: LambdaContext
) -> None:
    # GIVEN a secret with a Pipelines key and Track credentials
    stack = wire_stack(
        monkeypatch, fake_cio, secret={**track_secret(fake_cio), "pipelines_api_key": PIPELINES_KEY}
    )
    send_bodies(stack, stack.events_queue_url, [{"type": "identify", "userId": "u1"}])

    # WHEN it is delivered / THEN it went to the Pipelines API
    assert poll(stack, lambda_context).failed_ids == []
    assert [(r.api, r.path) for r in fake_cio.requests] == [("pipelines", "/v1/batch")]


def test_track_hosts_follow_the_region_unless_overridden() -> None:
    assert load_settings({}).track_base() == "https://track.customer.io"
    assert load_settings({"CUSTOMERIO_REGION": "eu"}).track_base() == "https://track-eu.customer.io"
    assert load_settings({}).track_base("eu") == "https://track-eu.customer.io"
    proxy = load_settings({"CUSTOMERIO_REGION": "eu", "CUSTOMERIO_TRACK_URL": "https://proxy.example/"})
    assert proxy.track_base("eu") == "https://proxy.example"
