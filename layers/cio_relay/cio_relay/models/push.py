"""The /v1/send/push body (Customer.io's transactional push)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cio_relay.models.email import TemplateId, Transactional


class CustomPayload(BaseModel):
    """Platform-specific payloads, forwarded as sent."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    ios: dict[str, Any] | None = None
    android: dict[str, Any] | None = None


class SendPush(Transactional):
    """Customer.io's transactional push request; `to` is `all` (default), `last_used` or a device token."""

    # Built on first use (the first /v1/send/push request or EmailQueue push message), not at import.
    model_config = ConfigDict(defer_build=True)  # merged with Transactional's

    transactional_message_id: TemplateId
    to: Annotated[str, Field(min_length=1)] | None = None
    title: str | None = None
    message: str | None = None
    image_url: str | None = None
    link: str | None = None
    sound: Literal["default", "none"] | None = None
    custom_data: dict[str, Any] | None = None
    custom_device: dict[str, Any] | None = None
    custom_payload: CustomPayload | None = None

    @model_validator(mode="after")
    def _size(self) -> SendPush:
        self._check_size()
        return self
