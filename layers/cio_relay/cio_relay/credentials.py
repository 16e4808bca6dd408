"""Customer.io credentials from one Secrets Manager secret (or local env vars), cached, re-read on 401."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cio_relay.errors import AuthRejected, ConfigurationError
from cio_relay.settings import Settings

SECRET_MAX_AGE_SECONDS = 300
T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    """Key values never appear in repr(), logs or error messages."""

    source: str
    pipelines_api_key: str | None = field(default=None, repr=False)
    app_api_key: str | None = field(default=None, repr=False)
    site_id: str | None = field(default=None, repr=False)
    track_api_key: str | None = field(default=None, repr=False)
    region: str | None = None

    @property
    def events_backend(self) -> str:
        """Which API identities and events go to: "pipelines" when a Pipelines key is set (it wins),
        "track" for site_id + track_api_key. Raises ConfigurationError when neither is complete."""
        if self.pipelines_api_key:
            return "pipelines"
        if self.site_id and self.track_api_key:
            return "track"
        raise ConfigurationError(
            "no credential for identities and events: set pipelines_api_key (Pipelines API), "
            f"or site_id and track_api_key (Track API), in {self.source}"
        )

    def pipelines_authorization(self) -> str:
        """Basic `<pipelines key>:`, the only credential the Pipelines API takes."""
        if not self.pipelines_api_key:
            raise ConfigurationError(f"no Pipelines credential: set pipelines_api_key in {self.source}")
        return "Basic " + base64.b64encode(f"{self.pipelines_api_key}:".encode()).decode()

    def track_authorization(self) -> str:
        """Basic `<site_id>:<track_api_key>`, the Track API's credential."""
        if not (self.site_id and self.track_api_key):
            raise ConfigurationError(f"no Track credential: set site_id and track_api_key in {self.source}")
        return "Basic " + base64.b64encode(f"{self.site_id}:{self.track_api_key}".encode()).decode()

    def app_authorization(self) -> str:
        if not self.app_api_key:
            raise ConfigurationError(f"no App API credential: set app_api_key in {self.source}")
        return f"Bearer {self.app_api_key}"


class SecretReader(Protocol):
    def __call__(self, name: str, *, force_fetch: bool) -> Any: ...


def _powertools_secret(name: str, *, force_fetch: bool) -> Any:
    from cio_relay import clients  # noqa: PLC0415 - keeps boto3 off import

    return clients.secrets_provider().get(
        name, transform="json", max_age=SECRET_MAX_AGE_SECONDS, force_fetch=force_fetch
    )


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return str(value).strip() or None if value not in (None, "") else None


class CredentialsProvider:
    """Reads credentials once and caches them; `refresh()` forces a re-read (after a 401/403)."""

    def __init__(self, settings: Settings, reader: SecretReader | None = None) -> None:
        self._settings = settings
        self._reader = reader or _powertools_secret
        self._lock = threading.Lock()
        self._cached: Credentials | None = None

    def get(self) -> Credentials:
        cached = self._cached
        if cached is None:
            with self._lock:
                cached = self._cached = self._load(force_fetch=False)
        return cached

    def refresh(self) -> Credentials:
        with self._lock:
            self._cached = self._load(force_fetch=True)
            return self._cached

    def with_refresh(self, send: Callable[[Credentials], T]) -> T:
        """Call `send` with the cached credentials; after AuthRejected re-read the secret once and call
        again at once. A second AuthRejected propagates (the delivery policy then backs off)."""
        try:
            return send(self.get())
        except AuthRejected:
            return send(self.refresh())

    def _load(self, *, force_fetch: bool) -> Credentials:
        settings = self._settings
        if not settings.secret_id:
            return Credentials(
                source="environment variables CUSTOMERIO_PIPELINES_API_KEY / CUSTOMERIO_SITE_ID / "
                "CUSTOMERIO_TRACK_TOKEN / CUSTOMERIO_APP_TOKEN (CUSTOMERIO_SECRET_ID is not set)",
                pipelines_api_key=settings.local_pipelines_api_key,
                app_api_key=settings.local_app_api_key,
                site_id=settings.local_site_id,
                track_api_key=settings.local_track_api_key,
            )
        source = f"secret {settings.secret_id}"
        try:
            data = self._reader(settings.secret_id, force_fetch=force_fetch)
        except Exception as exc:  # GetParameterError, TransformParameterError, botocore errors
            raise ConfigurationError(f"cannot read {source}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{source} must hold a JSON object")
        region = (_text(data, "region") or "").lower() or None
        if region not in (None, "us", "eu"):
            raise ConfigurationError(f"{source}: region must be 'us' or 'eu'")
        return Credentials(
            source=source,
            pipelines_api_key=_text(data, "pipelines_api_key"),
            app_api_key=_text(data, "app_api_key"),
            site_id=_text(data, "site_id"),
            track_api_key=_text(data, "track_api_key"),
            region=region,
        )
