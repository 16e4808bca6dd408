"""The /v1/send/email body, its limits, and the App API's replies."""

from __future__ import annotations

import base64
import binascii
import json
import time
from email.utils import getaddresses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from cio_relay.models import field_error, too_large

MAX_RECIPIENTS = 15
MAX_ATTACHMENTS_BYTES = 2 * 1024 * 1024  # base64 text as sent
MAX_PAYLOAD_BYTES = 1024 * 1024  # body without attachments
MAX_SEND_AT_AHEAD_SECONDS = 90 * 24 * 3600


def _stringify(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


IdValue = Annotated[str, BeforeValidator(_stringify), Field(min_length=1, max_length=1024)]


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


class SendEmail(BaseModel):
    """Customer.io's transactional email request. Unknown fields are forwarded as sent."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    transactional_message_id: int | Annotated[str, Field(min_length=1)] | None = None
    to: Annotated[str, Field(min_length=3)]
    identifiers: Identifiers
    message_data: dict[str, Any] | None = None
    from_: str | None = Field(None, alias="from")
    subject: str | None = None
    body: str | None = None
    body_plain: str | None = None
    cc: str | None = None
    bcc: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] | str | None = None
    attachments: dict[str, str] | None = None
    send_at: int | None = Field(None, ge=0)
    disable_message_retention: bool | None = None
    send_to_unsubscribed: bool | None = None
    tracked: bool | None = None
    queue_draft: bool | None = None
    language: str | None = None

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

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: int | None) -> int | None:
        if value is not None and value > time.time() + MAX_SEND_AT_AHEAD_SECONDS:
            raise ValueError("send_at must be at most 90 days ahead")
        return value

    @model_validator(mode="after")
    def _recipients_and_content(self) -> SendEmail:
        if count_recipients(self.to, self.cc, self.bcc) > MAX_RECIPIENTS:
            raise field_error("to", f"to, cc and bcc together allow at most {MAX_RECIPIENTS} recipients")
        if self.transactional_message_id is None and not (self.body and self.subject and self.from_):
            raise field_error(
                "transactional_message_id",
                "without transactional_message_id, body, subject and from are required",
            )
        rest = self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"attachments"})
        size = len(json.dumps(rest, separators=(",", ":")).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise too_large(f"{size} bytes without attachments; the limit is {MAX_PAYLOAD_BYTES}")
        return self

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class SendEmailResult(BaseModel):
    """Customer.io's answer to a send."""

    model_config = ConfigDict(extra="allow")

    delivery_id: str
    queued_at: int


class Deferred(BaseModel):
    """A send that could not be made now and waits on EmailQueue."""

    status: Literal["queued"] = "queued"
    message_id: str
    reason: str
