"""Customer.io Journeys' data limits, checked before a call is queued or sent.

Journeys applies them to data from the Track API and from Pipelines alike, and drops what exceeds
them after the API has already answered 200; refusing at the edge turns that silent loss into a 400
(API) or a dead-letter with the reason (queue). JOURNEYS_LIMITS_POLICY: reject (default), warn, off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from cio_relay.errors import InvalidRequest
from cio_relay.observability import count, logger

# Track API spec, "Customer limits" and "Track API Event limits"; objects have the same ones.
IDENTIFIER_BYTES = 150
EVENT_NAME_BYTES = 100
ATTRIBUTE_NAME_BYTES = 150
ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300

TAKES = "Customer.io takes at most"
_IDENTIFIERS = ("userId", "previousId", "groupId")
_ATTRIBUTES = {"identify": "traits", "group": "traits"}  # call type -> where its attributes are


def _bytes(value: Any) -> int:
    if isinstance(value, str):
        # Most values are short ASCII: the length alone proves they fit.
        return len(value) if len(value) * 4 <= ATTRIBUTE_VALUE_BYTES else len(value.encode())
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def problems(call: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, message) for each limit the call exceeds."""
    for key in _IDENTIFIERS:
        value = call.get(key)
        if isinstance(value, str) and len(value.encode()) > IDENTIFIER_BYTES:
            yield key, f"{key} is {len(value.encode())} bytes; {TAKES} {IDENTIFIER_BYTES}"
    name = call.get("event")
    if call.get("type") == "track" and isinstance(name, str) and len(name.encode()) > EVENT_NAME_BYTES:
        yield (
            "event",
            f"event name is {len(name.encode())} bytes; {TAKES} {EVENT_NAME_BYTES}",
        )
    where = _ATTRIBUTES.get(str(call.get("type")))
    attributes = call.get(where) if where else None
    if not isinstance(attributes, dict):
        return
    if len(attributes) > MAX_ATTRIBUTES:
        yield (
            where or "",
            f"{len(attributes)} attributes; {TAKES} {MAX_ATTRIBUTES} per call",
        )
    for key, value in attributes.items():
        if len(key.encode()) > ATTRIBUTE_NAME_BYTES:
            yield (
                f"{where}.{key[:40]}",
                (f"attribute name is {len(key.encode())} bytes; {TAKES} {ATTRIBUTE_NAME_BYTES}"),
            )
        size = _bytes(value)
        if size > ATTRIBUTE_VALUE_BYTES:
            yield (
                f"{where}.{key}",
                (f"attribute value is {size} bytes; {TAKES} {ATTRIBUTE_VALUE_BYTES}"),
            )


def check_limits(call: dict[str, Any], policy: str, prefix: str = "") -> None:
    """Raise InvalidRequest naming the field and the limit (policy `reject`), or log it (`warn`)."""
    if policy == "off":
        return
    for field, message in problems(call):
        if policy == "reject":
            raise InvalidRequest(f"{message} (JOURNEYS_LIMITS_POLICY=reject)", field=f"{prefix}{field}")
        logger.warning("call exceeds a Customer.io limit", extra={"field": f"{prefix}{field}"})
        count("JourneysLimitExceeded")
