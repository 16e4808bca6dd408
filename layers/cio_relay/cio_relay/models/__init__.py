"""Wire shapes: one model per Customer.io body, used by the routes, the queues and the client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from cio_relay.errors import InvalidRequest

# Discriminator tags pydantic puts in error locations; they are not fields a caller sent.
_TAGS = frozenset({"identify", "track", "page", "screen", "group", "alias", "body"})


def field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule's error that still names the field at fault."""
    return PydanticCustomError("field_error", message, {"field": field})


def describe(error: Any) -> tuple[str, str]:
    """(field, message) of one pydantic error, with locations like `batch.3.userId`."""
    loc: Sequence[Any] = error.get("loc", ())
    parts = [str(p) for p in loc if str(p) not in _TAGS]
    ctx = error.get("ctx") or {}
    if error.get("type") == "field_error" and ctx.get("field"):
        parts.append(str(ctx["field"]))
    return ".".join(parts) or "body", str(error.get("msg", "invalid"))


def invalid_request(exc: ValidationError) -> InvalidRequest:
    field, message = describe(exc.errors()[0])
    return InvalidRequest(message, field=field)
