"""What EventsFunction needs from the API it delivers identities and events to (Pipelines or Track)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from cio_relay.errors import CustomerIOError


class Item(NamedTuple):
    """One call as the backend takes it: packed into a batch request (`alone` None), or sent on its own
    to the path `alone`. (A tuple: one is made per call delivered.)"""

    body: bytes
    alone: str | None = None


class EventsBackend(Protocol):
    name: str
    max_item_bytes: int
    max_request_bytes: int

    def item(self, call: dict[str, Any], text: str | None = None) -> Item:
        """The call in this API's shape; InvalidRequest / Unsupported (naming the field) if it cannot be.

        `text`, when given, is the call's own JSON text (the same object as `call`): an API that takes
        calls as they are may send it instead of encoding `call` again."""
        ...

    def send_batch(self, items: Sequence[bytes]) -> dict[int, CustomerIOError]:
        """Send items in one request; returns those refused one by one (index -> error) while the rest
        were accepted. Raises CustomerIOError when the request as a whole failed."""
        ...

    def send_alone(self, path: str, body: bytes) -> None: ...
