"""Pipelines API: one method per call type, strict mode always on, and /v1/batch packing.

The call models are imported where a call is checked, not here: EmailFunction builds this client but
never sends a Pipelines call, and building those models is about 13 ms of its cold start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cio_relay.cio.backend import Item
from cio_relay.cio.base import CredentialedClient
from cio_relay.cio.transport import Transport
from cio_relay.credentials import Credentials, CredentialsProvider
from cio_relay.errors import CustomerIOError, InvalidRequest, PayloadTooLarge
from cio_relay.models import MAX_BATCH_BYTES, MAX_CALL_BYTES, describe
from cio_relay.settings import Settings

if TYPE_CHECKING:
    from cio_relay.models.pipelines import PipelinesCall

# `{"batch":[` + `]}` around the calls, and one comma between two calls.
BATCH_ENVELOPE_BYTES = len(b'{"batch":[]}')


# json.dumps(call, separators=(",", ":"), ensure_ascii=False), without building an encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(call: dict[str, Any]) -> bytes:
    return _ENCODER.encode(call).encode()


def encode_valid(call: dict[str, Any] | PipelinesCall, where: str = "") -> bytes:
    """A call's wire bytes, checked against its model and the 32 KB limit before anything is sent.

    Raises InvalidRequest / PayloadTooLarge naming the field (prefixed with `where`, e.g. "batch.3.").
    """
    from cio_relay.models.pipelines import CALL_MODELS, PipelinesCall  # noqa: PLC0415 - module docstring

    if not isinstance(call, PipelinesCall):
        model = CALL_MODELS.get(str(call.get("type")))
        if model is None:
            raise InvalidRequest(f"type must be one of {', '.join(CALL_MODELS)}", field=f"{where}type")
        try:
            model.model_validate(call)
        except ValidationError as exc:
            field, message = describe(exc.errors()[0])
            raise InvalidRequest(message, field=f"{where}{field}") from None
    encoded = encode(call.wire() if isinstance(call, PipelinesCall) else call)
    if len(encoded) > MAX_CALL_BYTES:
        raise PayloadTooLarge(
            f"call is {len(encoded)} bytes; the limit is {MAX_CALL_BYTES}", field=where.rstrip(".") or "body"
        )
    return encoded


def pack(
    encoded: Sequence[bytes], *, max_request_bytes: int = MAX_BATCH_BYTES, max_calls: int | None = None
) -> Iterator[list[int]]:
    """Group encoded calls (by index, in order) into as few /v1/batch requests as the size limit allows.

    Raises PayloadTooLarge if one call alone exceeds the per-call limit; callers check that first.
    """
    group: list[int] = []
    size = BATCH_ENVELOPE_BYTES
    for index, call in enumerate(encoded):
        if len(call) > MAX_CALL_BYTES:
            raise PayloadTooLarge(
                f"call is {len(call)} bytes; the limit is {MAX_CALL_BYTES}", field=f"batch.{index}"
            )
        extra = len(call) + (1 if group else 0)
        if group and (size + extra > max_request_bytes or (max_calls and len(group) >= max_calls)):
            yield group
            group, size, extra = [], BATCH_ENVELOPE_BYTES, len(call)
        group.append(index)
        size += extra
    if group:
        yield group


def batch_body(encoded: Iterable[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(encoded) + b"]}"


class PipelinesClient(CredentialedClient):
    """identify/track/page/screen/group/alias/batch against cdp(-eu).customer.io with Basic auth.

    Every request carries `X-Strict-Mode: 1`; without it Customer.io answers 200 to invalid payloads
    and drops them. Calls must already carry their `messageId` (see forwarding), so a call sent again
    is recognisably the same call.
    """

    name = "Pipelines API"
    max_item_bytes = MAX_CALL_BYTES
    max_request_bytes = MAX_BATCH_BYTES

    def __init__(self, transport: Transport, credentials: CredentialsProvider, settings: Settings) -> None:
        super().__init__(
            transport,
            credentials,
            base_url=settings.pipelines_base,
            authorization=Credentials.pipelines_authorization,
            extra_headers={"X-Strict-Mode": "1"},
        )

    def send(self, call: dict[str, Any]) -> None:
        """Send one call to its own endpoint (/v1/<type>); InvalidRequest/PayloadTooLarge before sending."""
        encoded = encode_valid(call)
        self._post(f"/v1/{call['type']}", encoded)

    def identify(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "identify"})

    def track(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "track"})

    def page(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "page"})

    def screen(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "screen"})

    def group(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "group"})

    def alias(self, call: dict[str, Any]) -> None:
        self.send({**call, "type": "alias"})

    def delete_person(self, user_id: str, message_id: str) -> None:
        """Customer.io has no person DELETE: send the `User Deleted` semantic event."""
        from cio_relay.models.pipelines import delete_person  # noqa: PLC0415 - see module docstring

        call = delete_person(user_id).wire()
        call["messageId"] = message_id
        self.send(call)

    def batch_encoded(self, encoded: Sequence[bytes]) -> None:
        """POST already-encoded calls as one /v1/batch request (the caller packed them with `pack`)."""
        self._post("/v1/batch", batch_body(encoded))

    def item(self, call: dict[str, Any], text: str | None = None) -> Item:
        """The call's /v1/batch bytes (already validated by the caller); PayloadTooLarge over 32 KB.

        `text` (the call's JSON as the producer wrote it) is sent as it is when it fits; otherwise, as
        when there is none, the call is encoded compactly.
        """
        if text is not None:
            raw = text.encode()
            if len(raw) <= MAX_CALL_BYTES:
                return Item(raw)
        encoded = encode(call)
        if len(encoded) > MAX_CALL_BYTES:
            raise PayloadTooLarge(f"call is {len(encoded)} bytes; Customer.io takes at most {MAX_CALL_BYTES}")
        return Item(encoded)

    def send_batch(self, items: Sequence[bytes]) -> dict[int, CustomerIOError]:
        """One /v1/batch request: Pipelines accepts or refuses it whole (400 in strict mode)."""
        self.batch_encoded(items)
        return {}

    def send_alone(self, path: str, body: bytes) -> None:
        self._post(path, body)

    def batch(self, calls: Sequence[dict[str, Any] | PipelinesCall]) -> int:
        """Send calls in as few /v1/batch requests as the limits allow; returns the request count.

        Every call is checked first, so an invalid or oversized one raises before any request is made.
        """
        encoded = [encode_valid(c, f"batch.{i}.") for i, c in enumerate(calls)]
        requests = 0
        for group in list(pack(encoded)):
            self.batch_encoded([encoded[i] for i in group])
            requests += 1
        return requests
