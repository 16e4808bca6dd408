"""The /v1/send/sms body (Customer.io's transactional SMS)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from cio_relay.models.email import StrictBool, TemplateId, Transactional


class SendSMS(Transactional):
    """Customer.io's transactional SMS request: `to` is the phone number."""

    transactional_message_id: TemplateId
    to: Annotated[str, Field(min_length=1)]
    from_: str | None = Field(None, alias="from")
    tracked: StrictBool | None = None

    @model_validator(mode="after")
    def _size(self) -> SendSMS:
        self._check_size()
        return self
