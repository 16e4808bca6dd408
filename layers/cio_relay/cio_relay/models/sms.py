"""The /v1/send/sms body (Customer.io's transactional SMS)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from cio_relay.models.email import StrictBool, TemplateId, Transactional


class SendSMS(Transactional):
    """Customer.io's transactional SMS request: `to` is the phone number."""

    # Built on first use (the first /v1/send/sms request or EmailQueue SMS message), not at import.
    model_config = ConfigDict(defer_build=True)  # merged with Transactional's

    transactional_message_id: TemplateId
    to: Annotated[str, Field(min_length=1)]
    from_: str | None = Field(None, alias="from")
    tracked: StrictBool | None = None

    @model_validator(mode="after")
    def _size(self) -> SendSMS:
        self._check_size()
        return self
