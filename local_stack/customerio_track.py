"""Customer.io's rules for Track API payloads and Journeys' data limits, as the fake applies them.

Track API (track.customer.io), per its OpenAPI document:

* v1 ``PUT /api/v1/customers/{identifier}`` (body = attributes),
  ``POST /api/v1/customers/{identifier}/events`` (``name`` required; ``data``, ``timestamp`` (unix
  int), ``id`` (a ULID), ``type`` event|page|screen),
  ``DELETE /api/v1/customers/{identifier}``; the identifier is an id, an email, or ``cio_<cio_id>``.
* v2 ``POST /api/v2/entity`` (one operation) and ``POST /api/v2/batch`` (``{"batch": [...]}``): each
  operation is ``{"type": "person"|"object", "identifiers": {...}, "action": ...}`` with the action's
  own fields; a refused item of a batch comes back in a 207 ``{"errors": [{"batch_index", "reason",
  "field", "message"}]}`` while the others are accepted.

Journeys (the workspace behind both Track and Pipelines) keeps identifiers to 150 bytes, event names to
100 bytes, a person to 300 attributes and an attribute value to 1000 bytes; data over those limits is
accepted by the API and then dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_EVENT_NAME_BYTES",
    "MAX_IDENTIFIER_BYTES",
    "identifier_kind",
    "is_ulid",
    "journeys_problem",
    "v1_event_error",
    "v2_item_error",
]

MAX_IDENTIFIER_BYTES = 150
MAX_EVENT_NAME_BYTES = 100
MAX_ATTRIBUTES = 300
MAX_ATTRIBUTE_VALUE_BYTES = 1000

PERSON_ACTIONS = frozenset(
    {
        "identify",
        "delete",
        "event",
        "screen",
        "page",
        "add_relationships",
        "delete_relationships",
        "add_device",
        "delete_device",
        "merge",
        "suppress",
        "unsuppress",
    }
)
OBJECT_ACTIONS = frozenset(
    {"identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships"}
)
EVENT_ACTIONS = frozenset({"event", "page", "screen"})
PERSON_IDENTIFIERS = ("id", "email", "phone", "cio_id")
V1_EVENT_TYPES = ("event", "page", "screen")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def is_ulid(value: Any) -> bool:
    return isinstance(value, str) and bool(_ULID.match(value.upper()))


def identifier_kind(raw_path_part: str) -> tuple[str, str]:
    """A v1 path identifier (percent-encoded) as (kind, value): ``cio_…`` cio_id, ``…@…`` email, else id."""
    value = unquote(raw_path_part)
    if value.startswith("cio_"):
        return "cio_id", value.removeprefix("cio_")
    if "@" in value:
        return "email", value
    return "id", value


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def journeys_problem(
    identifier: Any = None, *, name: Any = None, attributes: dict[str, Any] | None = None
) -> str | None:
    """Why Journeys would drop this data, or None."""
    if identifier is not None and _size(str(identifier)) > MAX_IDENTIFIER_BYTES:
        return f"identifier is {_size(str(identifier))} bytes; Journeys keeps at most {MAX_IDENTIFIER_BYTES}"
    if isinstance(name, str) and _size(name) > MAX_EVENT_NAME_BYTES:
        return f"event name is {_size(name)} bytes; Journeys keeps at most {MAX_EVENT_NAME_BYTES}"
    if attributes:
        if len(attributes) > MAX_ATTRIBUTES:
            return f"{len(attributes)} attributes; Journeys keeps at most {MAX_ATTRIBUTES} per person"
        for key, value in attributes.items():
            if value is not None and _size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
                return (
                    f"attribute {key} is {_size(value)} bytes; Journeys keeps at most "
                    f"{MAX_ATTRIBUTE_VALUE_BYTES} per value"
                )
    return None


def _timestamp_error(payload: dict[str, Any], field: str = "timestamp") -> str | None:
    value = payload.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{field} must be a unix timestamp (integer seconds)"
    return None


def v1_event_error(payload: Any) -> str | None:
    """Why POST /api/v1/customers/{id}/events answers 400, or None."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        return "name is required"
    if payload.get("type") is not None and payload.get("type") not in V1_EVENT_TYPES:
        return f"type must be one of {', '.join(V1_EVENT_TYPES)}"
    if "data" in payload and not isinstance(payload["data"], dict | None):
        return "data must be an object"
    if "id" in payload and not is_ulid(payload["id"]):
        return "id must be a valid ULID"
    return _timestamp_error(payload)


def _one_identifier(identifiers: Any, allowed: tuple[str, ...]) -> tuple[str, Any] | None:
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        return None
    ((kind, value),) = identifiers.items()
    if kind not in allowed or isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return kind, value


def _error(field: str, message: str, reason: str = "invalid") -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def person_identifier(item: dict[str, Any]) -> tuple[str, Any] | None:
    return _one_identifier(item.get("identifiers"), PERSON_IDENTIFIERS)


def _person_error(item: dict[str, Any]) -> dict[str, str] | None:
    action = item.get("action")
    if action not in PERSON_ACTIONS:
        return _error("action", f"action must be one of {', '.join(sorted(PERSON_ACTIONS))}")
    if action == "merge":
        for side in ("primary", "secondary"):
            if _one_identifier(item.get(side), ("id", "email", "cio_id")) is None:
                return _error(side, f"{side} must have exactly one of id, email or cio_id")
        return None
    if person_identifier(item) is None:
        return _error("identifiers", "identifiers must have exactly one of id, email, phone or cio_id")
    if action in EVENT_ACTIONS:
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            return _error("name", "name is required", reason="required")
        if "id" in item and not is_ulid(item["id"]):
            return _error("id", "id must be a valid ULID")
    if action in ("identify", *EVENT_ACTIONS) and not isinstance(item.get("attributes", {}), dict):
        return _error("attributes", "attributes must be an object")
    if action in ("add_relationships", "delete_relationships"):
        relationships = item.get("cio_relationships")
        if not isinstance(relationships, list) or not relationships:
            return _error(
                "cio_relationships", "cio_relationships must be a non-empty array", reason="required"
            )
    if action in ("add_device", "delete_device"):
        device = item.get("device")
        if not isinstance(device, dict) or not isinstance(device.get("token"), str) or not device["token"]:
            return _error("device.token", "device.token is required", reason="required")
    message = _timestamp_error(item)
    return _error("timestamp", message) if message else None


def _object_error(item: dict[str, Any]) -> dict[str, str] | None:
    action = item.get("action")
    if action not in OBJECT_ACTIONS:
        return _error("action", f"action must be one of {', '.join(sorted(OBJECT_ACTIONS))}")
    identifiers = item.get("identifiers")
    if not isinstance(identifiers, dict) or not (
        ("object_type_id" in identifiers and "object_id" in identifiers) or "cio_object_id" in identifiers
    ):
        return _error("identifiers", "identifiers must have object_type_id and object_id, or cio_object_id")
    if action in ("add_relationships", "delete_relationships"):
        relationships = item.get("cio_relationships")
        if not isinstance(relationships, list) or not relationships:
            return _error(
                "cio_relationships", "cio_relationships must be a non-empty array", reason="required"
            )
    return None


def v2_item_error(item: Any) -> dict[str, str] | None:
    """Why one v2 operation is refused (``{"reason", "field", "message"}``), or None."""
    if not isinstance(item, dict):
        return _error("", "each operation must be a JSON object")
    kind = item.get("type")
    if kind == "person":
        return _person_error(item)
    if kind == "object":
        return _object_error(item)
    if kind == "delivery":
        return (
            None
            if isinstance(item.get("identifiers"), dict)
            else _error("identifiers", "identifiers required")
        )
    return _error("type", "type must be person, object or delivery")


def v2_journeys_problem(item: dict[str, Any]) -> str | None:
    """Journeys' limits for one accepted person operation."""
    if item.get("type") != "person":
        return None
    found = person_identifier(item)
    attributes = item.get("attributes") if item.get("action") == "identify" else None
    name = item.get("name") if item.get("action") == "event" else None
    return journeys_problem(
        found[1] if found else None,
        name=name,
        attributes=attributes if isinstance(attributes, dict) else None,
    )
