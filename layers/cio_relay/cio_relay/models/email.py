"""The /v1/send/email body and its limits; what every transactional send shares; the App API's replies."""

from __future__ import annotations

import base64
import binascii
import time
from email.utils import getaddresses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    field_validator,
    model_validator,
)

from cio_relay.models import field_error, too_large

MAX_RECIPIENTS = 15
MAX_ATTACHMENTS_BYTES = 2 * 1024 * 1024  # base64 text as sent
MAX_PAYLOAD_BYTES = 1024 * 1024  # body without attachments
# Largest decompressed gzip request body /v1/send/email takes: attachments, the rest, and some room.
MAX_BODY_BYTES = MAX_ATTACHMENTS_BYTES + MAX_PAYLOAD_BYTES + 64 * 1024
MAX_SEND_AT_AHEAD_SECONDS = 90 * 24 * 3600


def _stringify(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


IdValue = Annotated[str, BeforeValidator(_stringify), Field(min_length=1, max_length=1024)]
# Where Customer.io has JSON types, they are kept: `true` is not template 1, "yes" is not a boolean.
StrictBool = Annotated[bool, Strict()]
StrictInt = Annotated[int, Strict()]
TemplateId = StrictInt | Annotated[str, Strict(), Field(min_length=1)]


class Identifiers(BaseModel):
    """Exactly one of id, email, cio_id names the person."""

    model_config = ConfigDict(extra="forbid")

    id: IdValue | None = None
    email: Annotated[str, Field(min_length=3, max_length=320)] | None = None
    cio_id: IdValue | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Identifiers:
        given = [name for name in ("id", "email", "cio_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of id, email or cio_id is required")
        return self


def count_recipients(*fields: str | None) -> int:
    return sum(1 for _, address in getaddresses([f for f in fields if f]) if address)


def at_most_recipients(limit: int, *fields: str | None) -> bool:
    """Whether the fields hold at most `limit` addresses. Each comma separates at most one more, so
    the common case (a few addresses) needs no address parsing, which is most of a send's validation."""
    if sum(f.count(",") + 1 for f in fields if f) <= limit:
        return True
    return count_recipients(*fields) <= limit


class Transactional(BaseModel):
    """The fields every /v1/send/* request shares. Unknown fields are forwarded as sent."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    identifiers: Identifiers
    message_data: dict[str, Any] | None = None
    send_at: StrictInt | None = Field(None, ge=0)
    disable_message_retention: StrictBool | None = None
    send_to_unsubscribed: StrictBool | None = None
    queue_draft: StrictBool | None = None
    language: str | None = None

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: int | None) -> int | None:
        if value is not None and value > time.time() + MAX_SEND_AT_AHEAD_SECONDS:
            raise ValueError("send_at must be at most 90 days ahead")
        return value

    def _check_size(self, exclude: set[str] | None = None) -> None:
        size = len(self.model_dump_json(by_alias=True, exclude_unset=True, exclude=exclude).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise too_large(f"{size} bytes without attachments; the limit is {MAX_PAYLOAD_BYTES}")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def wire_json(self) -> bytes:
        """wire() as compact JSON, encoded in one step."""
        return self.model_dump_json(by_alias=True, exclude_unset=True).encode()


class SendEmail(Transactional):
    """Customer.io's transactional email request."""

    transactional_message_id: TemplateId | None = None
    to: Annotated[str, Field(min_length=3)]
    from_: str | None = Field(None, alias="from")
    subject: str | None = None
    body: str | None = None
    body_plain: str | None = None
    cc: str | None = None
    bcc: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] | str | None = None
    attachments: dict[str, str] | None = None
    tracked: StrictBool | None = None

    @field_validator("attachments")
    @classmethod
    def _attachments(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if not value:
            return value
        total = 0
        for name, content in value.items():
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"attachment {name!r} is not valid base64") from None
            total += len(content)
        if total >= MAX_ATTACHMENTS_BYTES:
            raise too_large(f"attachments total {total} bytes; the limit is under {MAX_ATTACHMENTS_BYTES}")
        return value

    @model_validator(mode="after")
    def _recipients_and_content(self) -> SendEmail:
        if not at_most_recipients(MAX_RECIPIENTS, self.to, self.cc, self.bcc):
            raise field_error("to", f"to, cc and bcc together allow at most {MAX_RECIPIENTS} recipients")
        if self.transactional_message_id is None and not (self.body and self.subject and self.from_):
            raise field_error(
                "transactional_message_id",
                "without transactional_message_id, body, subject and from are required",
            )
        self._check_size(exclude={"attachments"})
        return self


class SendResult(BaseModel):
    """Customer.io's answer to a send. Any 2xx is a send, so the answer is read leniently: a proxy's
    202 `{}` or a float `queued_at` is still a send, never a reason to send again."""

    model_config = ConfigDict(extra="allow")

    delivery_id: str | None = None
    queued_at: int | float | None = None
    _replayed: bool = PrivateAttr(default=False)

    @field_validator("delivery_id", mode="before")
    @classmethod
    def _any_id(cls, value: object) -> object:
        return None if value is None or isinstance(value, dict | list) else str(value)

    @field_validator("queued_at", mode="before")
    @classmethod
    def _any_time(cls, value: object) -> object:
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    @classmethod
    def lenient(cls, answer: Any) -> SendResult:
        """The answer as a SendResult whatever its shape (not an object: an empty result)."""
        return cls.model_validate(answer if isinstance(answer, dict) else {})

    @property
    def replayed(self) -> bool:
        """True when this is the first send's answer given again for a repeated idempotency key."""
        return self._replayed

    def as_replay(self) -> SendResult:
        copy = self.model_copy()
        copy._replayed = True
        return copy


SendEmailResult = SendResult  # the name the email route and older callers use


class Deferred(BaseModel):
    """A send that could not be made now: waiting on EmailQueue (`queued`), or parked in the
    dead-letter queue for a person to check because its outcome is unknown (`dead_lettered`)."""

    status: Literal["queued", "dead_lettered"] = "queued"
    message_id: str
    reason: str
