"""The environment as one validated model, read once per container."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cio_relay.errors import ConfigurationError

Region = Literal["us", "eu"]

PIPELINES_HOSTS: dict[str, str] = {"us": "https://cdp.customer.io", "eu": "https://cdp-eu.customer.io"}
APP_HOSTS: dict[str, str] = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
TRACK_HOSTS: dict[str, str] = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


class Settings(BaseModel):
    """Every setting is named after its environment variable (see docs/design.md "Configuration")."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    secret_id: str | None = Field(None, alias="CUSTOMERIO_SECRET_ID")
    region: Region = Field("us", alias="CUSTOMERIO_REGION")
    pipelines_url: str | None = Field(None, alias="CUSTOMERIO_PIPELINES_URL")
    app_url: str | None = Field(None, alias="CUSTOMERIO_APP_URL")
    track_url: str | None = Field(None, alias="CUSTOMERIO_TRACK_URL")
    connect_timeout: float = Field(3.05, gt=0, le=30, alias="CUSTOMERIO_CONNECT_TIMEOUT")
    read_timeout: float = Field(10.0, gt=0, le=120, alias="CUSTOMERIO_READ_TIMEOUT")
    events_queue_url: str | None = Field(None, alias="EVENTS_QUEUE_URL")
    email_queue_url: str | None = Field(None, alias="EMAIL_QUEUE_URL")
    events_dlq_url: str | None = Field(None, alias="EVENTS_DLQ_URL")
    email_dlq_url: str | None = Field(None, alias="EMAIL_DLQ_URL")
    idempotency_table: str | None = Field(None, alias="IDEMPOTENCY_TABLE")
    idempotency_ttl_seconds: int = Field(86_400, ge=60, alias="IDEMPOTENCY_TTL_SECONDS")
    email_send_concurrency: int = Field(10, ge=1, le=100, alias="EMAIL_SEND_CONCURRENCY")
    events_send_concurrency: int = Field(4, ge=1, le=16, alias="EVENTS_SEND_CONCURRENCY")
    email_dedupe_window_seconds: int = Field(0, ge=0, le=2_592_000, alias="EMAIL_DEDUPE_WINDOW_SECONDS")
    email_on_ambiguous: Literal["resend", "dead_letter"] = Field("resend", alias="EMAIL_ON_AMBIGUOUS")
    retry_base_seconds: float = Field(30, ge=0, le=43_200, alias="RETRY_BASE_SECONDS")
    retry_cap_seconds: float = Field(3_600, ge=0, le=43_200, alias="RETRY_CAP_SECONDS")
    max_receive_count: int | None = Field(None, ge=1, le=1000, alias="MAX_RECEIVE_COUNT")
    event_name_policy: Literal["warn", "reject", "off"] = Field("warn", alias="EVENT_NAME_POLICY")
    # Journeys' data limits (ids, event names, attributes): refuse at the edge, log, or let through.
    limits_policy: Literal["reject", "warn", "off"] = Field("reject", alias="JOURNEYS_LIMITS_POLICY")
    tracing_enabled: bool = Field(False, alias="TRACING_ENABLED")
    # Local runs only (docs/design.md): used when CUSTOMERIO_SECRET_ID is unset.
    local_pipelines_api_key: str | None = Field(None, alias="CUSTOMERIO_PIPELINES_API_KEY", repr=False)
    local_site_id: str | None = Field(None, alias="CUSTOMERIO_SITE_ID", repr=False)
    local_track_api_key: str | None = Field(None, alias="CUSTOMERIO_TRACK_TOKEN", repr=False)
    local_app_api_key: str | None = Field(None, alias="CUSTOMERIO_APP_TOKEN", repr=False)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: object) -> object:
        # CloudFormation cannot omit a variable, so an empty string means "not set". One validator for
        # the whole model: a validator on every field ("*") costs about 1 ms of cold start to build.
        if isinstance(data, dict):
            return {k: None if isinstance(v, str) and not v.strip() else v for k, v in data.items()}
        return data

    def pipelines_base(self, region: str | None = None) -> str:
        return (self.pipelines_url or PIPELINES_HOSTS[region or self.region]).rstrip("/")

    def app_base(self, region: str | None = None) -> str:
        return (self.app_url or APP_HOSTS[region or self.region]).rstrip("/")

    def track_base(self, region: str | None = None) -> str:
        return (self.track_url or TRACK_HOSTS[region or self.region]).rstrip("/")

    def require(self, attribute: str) -> str:
        """The value of a setting a code path cannot do without; ConfigurationError names the variable."""
        value = getattr(self, attribute)
        if not value:
            alias = type(self).model_fields[attribute].alias
            raise ConfigurationError(f"environment variable {alias} is not set")
        return str(value)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; an invalid value raises ConfigurationError naming it."""
    # CloudFormation cannot omit a variable, so a blank one means "not set": the default applies.
    source = {k: v for k, v in (os.environ if environ is None else environ).items() if v.strip()}
    if "CUSTOMERIO_REGION" in source:
        source["CUSTOMERIO_REGION"] = source["CUSTOMERIO_REGION"].strip().lower()
    try:
        return Settings.model_validate(source)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this container (cached; tests call get_settings.cache_clear())."""
    return load_settings()
