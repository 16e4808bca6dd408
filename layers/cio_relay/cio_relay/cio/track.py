"""Track API (site_id + track_api_key): Pipelines calls mapped to Track v2 batch items, and /api/v2/batch.

Mapping (Track OpenAPI, v2 `person_*` / `object_*` operations and v1 anonymous events):

| Pipelines call | Track |
|---|---|
| identify (userId) | person `identify`, traits as `attributes` (+ `anonymous_id` when the call has one) |
| track / page / screen (userId) | person `event` / `page` / `screen` (`name`, `attributes`, `id`) |
| track / page / screen (anonymousId only) | v1 `POST /api/v1/events` with `anonymous_id`, one each |
| track `User Deleted` / `User Suppressed` / `User Unsuppressed` | person `delete` / `(un)suppress` |
| track `Device Created or Updated` / `Device Deleted` | person `add_device` / `delete_device` |
| group | object `identify` (`identify_anonymous` for an anonymousId), related to the person |
| alias | person `merge`: `primary` userId, `secondary` previousId |

A device event takes the token from `context.device.token` and the platform from `context.device.type`
(`properties.device_id` / `properties.platform` when the context has none); `last_used` is the call's
timestamp; the other properties are the device's `attributes`.

Anything else (identify by anonymousId alone, relationship/object/report semantic events, an object
event) raises Unsupported: it has no Track equivalent, and the record is dead-lettered with that reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cio_relay.cio.backend import Item
from cio_relay.cio.base import CredentialedClient
from cio_relay.cio.transport import MAX_MESSAGE_CHARS, Response, Transport
from cio_relay.credentials import Credentials, CredentialsProvider
from cio_relay.errors import CustomerIOError, InvalidRequest, Permanent, Retryable, Unsupported
from cio_relay.settings import Settings

BACKEND = "Track API"
MAX_ITEM_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500_000  # "smaller than 500kb": the decimal reading is the safe one
BATCH_PATH = "/api/v2/batch"
ANONYMOUS_EVENTS_PATH = "/api/v1/events"
PERSON_ACTIONS = {"User Deleted": "delete", "User Suppressed": "suppress", "User Unsuppressed": "unsuppress"}
DEVICE_ACTIONS = {"Device Created or Updated": "add_device", "Device Deleted": "delete_device"}
_DEVICE_KEYS = ("device_id", "token", "platform", "type", "last_used")
DEFAULT_OBJECT_TYPE = "1"  # Pipelines: "If you don't include this value, we assume ... `1`"

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_for(message_id: str, when_ms: int) -> str:
    """A ULID that is the same for every retry of one call: its time part is the call's timestamp, its
    80 "random" bits are the first 80 bits of SHA-256(messageId). Track de-duplicates events on it.

    (A ULID is 128 bits in Crockford base32; the python-ulid package costs ~30 ms of cold start to
    import, for these six lines.)
    """
    value = (max(0, min(when_ms, 2**48 - 1)) << 80) | int.from_bytes(
        hashlib.sha256(message_id.encode()).digest()[:10], "big"
    )
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def unix_ms(timestamp: Any) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 timestamp (naive = UTC); InvalidRequest if unreadable."""
    if timestamp is None:
        return None
    try:
        when = datetime.fromisoformat(str(timestamp))
    except ValueError:
        raise InvalidRequest("timestamp must be an ISO-8601 date-time", field="timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _person(call: dict[str, Any], action: str, **fields: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": call["userId"]}, "action": action, **fields}


def _event(call: dict[str, Any], kind: str, when_ms: int | None) -> Item:
    properties = call.get("properties") or {}
    if kind == "track":
        name = call.get("event")
        person_action = PERSON_ACTIONS.get(str(name))
        if person_action is not None and call.get("userId"):
            return Item(encode(_person(call, person_action)))
        device_action = DEVICE_ACTIONS.get(str(name))
        if device_action is not None and call.get("userId"):
            return Item(encode(_person(call, device_action, device=_device(call, device_action, when_ms))))
        if person_action is not None or device_action is not None or str(name) in _SEMANTIC:
            raise Unsupported(
                f"the {BACKEND} has no equivalent of the semantic event {name!r}", field="event"
            )
    else:
        # Track requires a page/screen name; a page call often carries only its URL or path.
        name = call.get("name") or properties.get("path") or properties.get("url")
        if not isinstance(name, str) or not name.strip():
            raise Unsupported(f"the {BACKEND} needs a name for a {kind} view", field="name")
    fields: dict[str, Any] = {"name": name, "id": ulid_for(str(call["messageId"]), when_ms or 0)}
    if when_ms is not None:
        fields["timestamp"] = when_ms // 1000
    action = "event" if kind == "track" else kind
    if call.get("userId"):
        return Item(encode(_person(call, action, attributes=properties, **fields)))
    if call.get("anonymousId"):
        body = {"anonymous_id": call["anonymousId"], "type": action, "data": properties, **fields}
        return Item(encode(body), alone=ANONYMOUS_EVENTS_PATH)
    raise Unsupported(
        f"the {BACKEND} has no event for an object alone (groupId without a person)", field="userId"
    )


def _device(call: dict[str, Any], action: str, when_ms: int | None) -> dict[str, Any]:
    """Track's `device` of a Pipelines device event: token and platform from `context.device`."""
    context = call.get("context")
    from_context = context.get("device") if isinstance(context, dict) else None
    from_context = from_context if isinstance(from_context, dict) else {}
    properties = call.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    token = from_context.get("token") or properties.get("device_id") or properties.get("token")
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest(f"{call.get('event')} needs the device token", field="context.device.token")
    device: dict[str, Any] = {"token": token}
    if action == "delete_device":
        return device
    platform = from_context.get("type") or properties.get("platform")
    if isinstance(platform, str) and platform:
        device["platform"] = platform.lower()
    if when_ms is not None:
        device["last_used"] = when_ms // 1000
    attributes = {key: value for key, value in properties.items() if key not in _DEVICE_KEYS}
    if attributes:
        device["attributes"] = attributes
    return device


_SEMANTIC = frozenset(
    {
        "Relationship Deleted",
        "Object Deleted",
        "Report Delivery Event",
        "Report Content Event",
    }
)


def _group(call: dict[str, Any]) -> dict[str, Any]:
    traits = dict(call.get("traits") or {})
    object_type = (
        traits.pop("object_type_id", None) or traits.pop("objectTypeId", None) or DEFAULT_OBJECT_TYPE
    )
    traits.pop("objectTypeId", None)
    relationship = traits.pop("relationshipAttributes", None)
    item: dict[str, Any] = {
        "type": "object",
        "identifiers": {"object_type_id": str(object_type), "object_id": call["groupId"]},
        "action": "identify",
        "attributes": traits,
    }
    if call.get("userId"):
        person = {"id": call["userId"]}
    elif call.get("anonymousId"):
        item["action"] = "identify_anonymous"
        person = {"anonymous_id": call["anonymousId"]}
    else:
        return item
    link: dict[str, Any] = {"identifiers": person}
    if isinstance(relationship, dict):
        link["relationship_attributes"] = relationship
    item["cio_relationships"] = [link]
    return item


def to_item(call: dict[str, Any]) -> Item:
    """The Track request for one Pipelines call. Raises Unsupported / InvalidRequest naming the field."""
    kind = call.get("type")
    when_ms = unix_ms(call.get("timestamp"))
    if kind in ("track", "page", "screen"):
        item = _event(call, str(kind), when_ms)
    elif kind == "identify":
        if not call.get("userId"):
            raise Unsupported(f"the {BACKEND} cannot identify a person by anonymousId alone", field="userId")
        attributes = dict(call.get("traits") or {})
        if call.get("anonymousId"):
            attributes.setdefault("anonymous_id", call["anonymousId"])  # merges the anonymous events
        fields: dict[str, Any] = {"attributes": attributes}
        if when_ms is not None:
            fields["timestamp"] = when_ms // 1000
        item = Item(encode(_person(call, "identify", **fields)))
    elif kind == "group":
        item = Item(encode(_group(call)))
    elif kind == "alias":
        merge = {"type": "person", "action": "merge", "primary": {"id": call["userId"]}}
        item = Item(encode({**merge, "secondary": {"id": call["previousId"]}}))
    else:
        raise Unsupported(f"the {BACKEND} has no equivalent of a {kind!r} call", field="type")
    if len(item.body) > MAX_ITEM_BYTES:
        raise InvalidRequest(
            f"call is {len(item.body)} bytes for the {BACKEND}; it takes at most {MAX_ITEM_BYTES}"
        )
    return item


def encode(body: dict[str, Any]) -> bytes:
    return _ENCODER.encode(body).encode()


def refused_items(response: Response, size: int) -> dict[int, CustomerIOError]:
    """The items a 207 names as refused, each with Customer.io's reason. A 207 whose list cannot be read
    refuses nothing knowingly and accepts nothing knowingly: every item is retried (events carry ULIDs)."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    if not isinstance(errors, list):
        problem = Retryable(f"POST {BATCH_PATH}: Customer.io answered 207 without a readable error list")
        return dict.fromkeys(range(size), problem)
    refused: dict[int, CustomerIOError] = {}
    for error in errors:
        index = error.get("batch_index") if isinstance(error, dict) else None
        if isinstance(index, int) and 0 <= index < size:
            detail = ": ".join(str(error[k]) for k in ("field", "reason", "message") if error.get(k))
            message = (
                f"POST {BATCH_PATH}: Customer.io refused item {index} (207): {detail or 'no reason given'}"
            )
            refused[index] = Permanent(message[:MAX_MESSAGE_CHARS], status=207)
    return refused


class TrackClient(CredentialedClient):
    """Track API requests with Basic site_id:track_api_key against track(-eu).customer.io."""

    name = BACKEND
    max_item_bytes = MAX_ITEM_BYTES
    max_request_bytes = MAX_BATCH_BYTES

    def __init__(self, transport: Transport, credentials: CredentialsProvider, settings: Settings) -> None:
        super().__init__(
            transport,
            credentials,
            base_url=settings.track_base,
            authorization=Credentials.track_authorization,
        )

    def item(self, call: dict[str, Any], text: str | None = None) -> Item:
        return to_item(call)  # the Track API's shapes differ from the call's: `text` is of no use

    def send_batch(self, items: Sequence[bytes]) -> dict[int, CustomerIOError]:
        """POST items as one /api/v2/batch request; returns the items Customer.io refused (by index)."""
        response = self._post(BATCH_PATH, b'{"batch":[' + b",".join(items) + b"]}")
        return refused_items(response, len(items)) if response.status == 207 else {}

    def send_alone(self, path: str, body: bytes) -> None:
        self._post(path, body)
