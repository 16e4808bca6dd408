"""Pipelines calls as Track API requests (Track OpenAPI: v2 person/object operations, v1 anonymous events)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import ulid
from cio_relay.cio.track import ANONYMOUS_EVENTS_PATH, refused_items, to_item, ulid_for
from cio_relay.cio.transport import Response
from cio_relay.errors import InvalidRequest, Permanent, Retryable, Unsupported

WHEN = "2026-03-01T12:30:45.250Z"
WHEN_S = int(datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC).timestamp())


def item(call: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    mapped = to_item({"messageId": "m-1", "timestamp": WHEN, **call})
    return mapped.alone, json.loads(mapped.body)


def test_identify_is_a_person_identify_with_traits_as_attributes() -> None:
    path, body = item({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "context": {"ip": "x"}})
    assert path is None
    assert body == {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "identify",
        "attributes": {"plan": "pro"},
        "timestamp": WHEN_S,
    }


def test_identify_with_an_anonymous_id_sets_the_attribute_that_merges_anonymous_events() -> None:
    _, body = item({"type": "identify", "userId": "u1", "anonymousId": "a1"})
    assert body["attributes"] == {"anonymous_id": "a1"}


def test_identify_by_anonymous_id_alone_has_no_track_equivalent() -> None:
    with pytest.raises(Unsupported, match="Track API") as caught:
        item({"type": "identify", "anonymousId": "a1"})
    assert caught.value.field == "userId"


def test_track_is_a_person_event_with_name_attributes_timestamp_and_a_ulid() -> None:
    path, body = item({"type": "track", "userId": "u1", "event": "paid", "properties": {"amount": 3}})
    assert path is None
    assert body == {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "event",
        "name": "paid",
        "attributes": {"amount": 3},
        "id": ulid_for("m-1", WHEN_S * 1000 + 250),
        "timestamp": WHEN_S,
    }


def test_event_id_is_a_ulid_of_the_event_time_and_stable_for_one_message_id() -> None:
    # GIVEN the same call mapped twice (a retry), and another call
    first = ulid_for("m-1", WHEN_S * 1000 + 250)
    again = ulid_for("m-1", WHEN_S * 1000 + 250)
    other = ulid_for("m-2", WHEN_S * 1000 + 250)

    # THEN the id is the same on a retry, differs between calls, and is a ULID of the event time
    assert first == again
    assert first != other
    parsed = ulid.ULID.from_str(first)
    assert str(parsed) == first
    assert parsed.milliseconds == WHEN_S * 1000 + 250


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_page_and_screen_are_person_views(kind: str) -> None:
    _, body = item({"type": kind, "userId": "u1", "name": "Pricing", "properties": {"path": "/pricing"}})
    assert (body["action"], body["name"], body["attributes"]) == (kind, "Pricing", {"path": "/pricing"})
    assert len(body["id"]) == 26


def test_page_without_a_name_is_named_by_its_path() -> None:
    _, body = item({"type": "page", "userId": "u1", "properties": {"path": "/pricing", "url": "https://x/p"}})
    assert body["name"] == "/pricing"


def test_screen_without_a_name_cannot_be_sent() -> None:
    with pytest.raises(Unsupported, match="needs a name") as caught:
        item({"type": "screen", "userId": "u1"})
    assert caught.value.field == "name"


@pytest.mark.parametrize("kind", ["track", "page", "screen"])
def test_anonymous_events_go_to_the_v1_anonymous_events_endpoint(kind: str) -> None:
    call = {"type": kind, "anonymousId": "a1", "event": "viewed", "name": "Home", "properties": {"k": "v"}}
    path, body = item(call)
    assert path == ANONYMOUS_EVENTS_PATH
    assert body == {
        "anonymous_id": "a1",
        "type": "event" if kind == "track" else kind,
        "data": {"k": "v"},
        "name": "viewed" if kind == "track" else "Home",
        "id": ulid_for("m-1", WHEN_S * 1000 + 250),
        "timestamp": WHEN_S,
    }


@pytest.mark.parametrize(
    ("event", "action"),
    [("User Deleted", "delete"), ("User Suppressed", "suppress"), ("User Unsuppressed", "unsuppress")],
)
def test_person_semantic_events_are_tracks_own_operations(event: str, action: str) -> None:
    # GIVEN DELETE /v1/customers/u1, queued as the `User Deleted` semantic event
    _, body = item({"type": "track", "userId": "u1", "event": event})

    # THEN the Track API's own person operation is used
    assert body == {"type": "person", "identifiers": {"id": "u1"}, "action": action}


def test_device_created_or_updated_is_a_person_add_device_from_context_device() -> None:
    # GIVEN the Pipelines device semantic event: token and type in context.device, attributes as properties
    _, body = item(
        {
            "type": "track",
            "userId": "u1",
            "event": "Device Created or Updated",
            "context": {"device": {"token": "tok-1", "type": "ios"}},
            "properties": {"app_version": "2.1", "push_enabled": True},
        }
    )

    # THEN it is Track's add_device with token, platform, last_used (the call's time) and attributes
    assert body == {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "add_device",
        "device": {
            "token": "tok-1",
            "platform": "ios",
            "last_used": WHEN_S,
            "attributes": {"app_version": "2.1", "push_enabled": True},
        },
    }


def test_device_event_without_a_context_device_uses_the_device_id_and_platform_properties() -> None:
    call = {"type": "track", "userId": "u1", "event": "Device Created or Updated"}
    _, body = item({**call, "properties": {"device_id": "tok-2", "platform": "Android", "k": 1}})
    assert body["device"] == {
        "token": "tok-2",
        "platform": "android",
        "last_used": WHEN_S,
        "attributes": {"k": 1},
    }


def test_device_deleted_is_a_person_delete_device_by_token() -> None:
    call = {"type": "track", "userId": "u1", "event": "Device Deleted"}
    _, body = item({**call, "context": {"device": {"token": "tok-1", "type": "ios"}}})
    assert body == {
        "type": "person",
        "identifiers": {"id": "u1"},
        "action": "delete_device",
        "device": {"token": "tok-1"},
    }


@pytest.mark.parametrize("event", ["Device Created or Updated", "Device Deleted"])
def test_device_event_without_a_token_is_refused_naming_the_field(event: str) -> None:
    with pytest.raises(InvalidRequest, match="device token") as caught:
        item({"type": "track", "userId": "u1", "event": event, "context": {"device": {"type": "ios"}}})
    assert caught.value.field == "context.device.token"


def test_device_event_of_an_anonymous_person_is_refused_naming_the_backend() -> None:
    call = {"type": "track", "anonymousId": "a1", "event": "Device Deleted"}
    with pytest.raises(Unsupported, match="Track API has no equivalent") as caught:
        item({**call, "context": {"device": {"token": "tok-1"}}})
    assert caught.value.field == "event"


@pytest.mark.parametrize(
    "event", ["Relationship Deleted", "Object Deleted", "Report Delivery Event", "Report Content Event"]
)
def test_other_semantic_events_are_refused_naming_the_backend_and_the_event(event: str) -> None:
    with pytest.raises(Unsupported) as caught:
        item({"type": "track", "userId": "u1", "event": event})
    assert str(caught.value) == f"event: the Track API has no equivalent of the semantic event {event!r}"
    assert caught.value.field == "event"


def test_group_is_an_object_identify_related_to_the_person() -> None:
    traits = {"name": "Acme", "objectTypeId": 2, "relationshipAttributes": {"role": "admin"}}
    _, body = item({"type": "group", "userId": "u1", "groupId": "acme", "traits": traits})
    assert body == {
        "type": "object",
        "identifiers": {"object_type_id": "2", "object_id": "acme"},
        "action": "identify",
        "attributes": {"name": "Acme"},
        "cio_relationships": [{"identifiers": {"id": "u1"}, "relationship_attributes": {"role": "admin"}}],
    }


def test_group_of_an_anonymous_person_uses_identify_anonymous_and_object_type_1() -> None:
    _, body = item({"type": "group", "anonymousId": "a1", "groupId": "acme"})
    assert body["action"] == "identify_anonymous"
    assert body["identifiers"] == {"object_type_id": "1", "object_id": "acme"}
    assert body["cio_relationships"] == [{"identifiers": {"anonymous_id": "a1"}}]


def test_alias_is_a_merge_of_the_previous_id_into_the_user_id() -> None:
    _, body = item({"type": "alias", "userId": "u1", "previousId": "old-1"})
    merge = {"type": "person", "action": "merge", "primary": {"id": "u1"}}
    assert body == {**merge, "secondary": {"id": "old-1"}}


def test_unreadable_timestamp_is_refused_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_item({"type": "identify", "userId": "u1", "messageId": "m", "timestamp": "soon"})
    assert caught.value.field == "timestamp"


def test_207_names_the_refused_items_with_customerios_reason() -> None:
    # GIVEN a 207 refusing items 0 and 2 of three
    errors = [
        {"batch_index": 2, "reason": "invalid", "field": "identifiers", "message": "id is blank"},
        {"batch_index": 0, "reason": "too large"},
        {"batch_index": 9, "reason": "not ours"},
    ]
    answer = Response(status=207, body=json.dumps({"errors": errors}).encode(), elapsed=0.0)

    # WHEN it is read
    refused = refused_items(answer, 3)

    # THEN exactly those two are refused for good, with Customer.io's reason; item 1 was accepted
    assert sorted(refused) == [0, 2]
    assert all(isinstance(e, Permanent) for e in refused.values())
    assert "identifiers: invalid: id is blank" in str(refused[2])
    assert "too large" in str(refused[0])


def test_207_without_a_readable_error_list_retries_every_item() -> None:
    answer = Response(status=207, body=b"<html>", elapsed=0.0)
    refused = refused_items(answer, 2)
    assert sorted(refused) == [0, 1]
    assert all(isinstance(e, Retryable) for e in refused.values())
