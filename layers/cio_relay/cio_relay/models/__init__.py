"""Wire shapes: one model per Customer.io body, used by the routes, the queues and the client."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from cio_relay.errors import InvalidRequest, PayloadTooLarge

# Discriminator tags pydantic puts in error locations; they are not fields a caller sent.
_TAGS = frozenset({"identify", "track", "page", "screen", "group", "alias", "body"})
# Labels pydantic puts in a location for the union member that failed (`int`, `constrained-str`,
# `dict[str,str]`, `function-after[...]`): not fields either.
_UNION_LABEL = re.compile(r"^(int|float|str|bool|bytes|none|constrained-[a-z]+|[a-z-]+\[.*\])$")
# The error type of a size limit: the API answers it with 413, the queues raise PayloadTooLarge.
TOO_LARGE = "payload_too_large"


# Customer.io's Pipelines limits. Here rather than in models.pipelines so the client can use them
# without building the call models.
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500_000  # Customer.io says "500KB"; the decimal reading is the safe one.

# Deeper JSON than this is refused: pydantic cannot serialise past ~250 levels (it raises ValueError,
# which would be a 500 or a crashed batch), and no Customer.io payload needs more.
MAX_NESTING = 64
_CONTAINERS = (dict, list)


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists/objects in `value` nest deeper than `limit` levels (iterative: no recursion)."""
    # Only containers go on the stack: this runs on every call the relay validates.
    if not isinstance(value, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule's error that still names the field at fault."""
    return PydanticCustomError("field_error", message, {"field": field})


def too_large(message: str, field: str | None = None) -> PydanticCustomError:
    """A size-limit error (413), naming the field at fault when the location does not."""
    return PydanticCustomError(TOO_LARGE, message, {"field": field} if field else None)


def describe(error: Any) -> tuple[str, str]:
    """(field, message) of one pydantic error, with locations like `batch.3.userId`."""
    loc: Sequence[Any] = error.get("loc", ())
    parts = [str(p) for p in loc if str(p) not in _TAGS and not _UNION_LABEL.match(str(p))]
    ctx = error.get("ctx") or {}
    if error.get("type") in ("field_error", TOO_LARGE) and ctx.get("field"):
        parts.append(str(ctx["field"]))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "too_short" and isinstance(error.get("input"), str):
        # pydantic words a string's min_length as "items" once a BeforeValidator precedes it.
        message = f"must not be empty (at least {ctx.get('min_length', 1)} character)"
    return ".".join(parts) or "body", message


def invalid_request(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = next((e for e in errors if e.get("type") == TOO_LARGE), errors[0])
    field, message = describe(first)
    error = PayloadTooLarge if first.get("type") == TOO_LARGE else InvalidRequest
    return error(message, field=field)
