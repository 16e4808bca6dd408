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


def _over(text: str, limit: int) -> bool:
    # UTF-8 takes at most 4 bytes a character: most strings are proven short without encoding them.
    return len(text) * 4 > limit and len(text.encode()) > limit


def _bytes(value: Any) -> int:
    kind = type(value)
    if kind is str:
        # Most values are short ASCII: the length alone proves they fit.
        return len(value) if len(value) * 4 <= ATTRIBUTE_VALUE_BYTES else len(value.encode())
    if kind is bool or kind is float or value is None:
        return len(repr(value))  # at most 24 characters as JSON
    if kind is int and value.bit_length() < 64:
        return 20  # at most 20 digits with the sign
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def problems(call: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, message) for each limit the call exceeds."""
    for key in _IDENTIFIERS:
        value = call.get(key)
        if isinstance(value, str) and _over(value, IDENTIFIER_BYTES):
            yield key, f"{key} is {len(value.encode())} bytes; {TAKES} {IDENTIFIER_BYTES}"
    name = call.get("event")
    if call.get("type") == "track" and isinstance(name, str) and _over(name, EVENT_NAME_BYTES):
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
        if _over(key, ATTRIBUTE_NAME_BYTES):
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


_INT64 = 1 << 63


def _plainly_within(call: dict[str, Any]) -> bool:
    """True when the call is obviously within every limit (short strings, numbers): the usual case,
    decided without walking `problems`. False means `problems` must look.

    (Written out, without helper calls: it runs on every call the relay accepts or delivers.)
    """
    get = call.get
    # Each string at most a quarter of its limit in characters (UTF-8 takes at most 4 bytes each).
    user, previous, group, event = get("userId"), get("previousId"), get("groupId"), get("event")
    if (
        (type(user) is str and len(user) * 4 > IDENTIFIER_BYTES)
        or (type(previous) is str and len(previous) * 4 > IDENTIFIER_BYTES)
        or (type(group) is str and len(group) * 4 > IDENTIFIER_BYTES)
        or (type(event) is str and len(event) * 4 > EVENT_NAME_BYTES)
    ):
        return False
    where = _ATTRIBUTES.get(get("type"))  # type: ignore[arg-type]
    attributes = get(where) if where else None
    return attributes is None or _plain_attributes(attributes)


def _plain_attributes(attributes: Any) -> bool:
    """At most MAX_ATTRIBUTES, each with a short name and a short string or a plain number."""
    if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
        return False
    for key, value in attributes.items():
        if len(key) * 4 > ATTRIBUTE_NAME_BYTES:
            return False
        kind = type(value)
        if kind is str:
            if len(value) * 4 > ATTRIBUTE_VALUE_BYTES:
                return False
        elif not (
            kind is bool or kind is float or value is None or (kind is int and -_INT64 < value < _INT64)
        ):
            return False
    return True


def check_limits(call: dict[str, Any], policy: str, prefix: str = "") -> None:
    """Raise InvalidRequest naming the field and the limit (policy `reject`), or log it (`warn`)."""
    if policy == "off" or _plainly_within(call):
        return
    for field, message in problems(call):
        if policy == "reject":
            raise InvalidRequest(f"{message} (JOURNEYS_LIMITS_POLICY=reject)", field=f"{prefix}{field}")
        logger.warning("call exceeds a Customer.io limit", extra={"field": f"{prefix}{field}"})
        count("JourneysLimitExceeded")
