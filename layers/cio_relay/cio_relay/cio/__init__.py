"""The Customer.io client: transport, Pipelines, Track and App APIs, built once per container."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cio_relay.cio.app_api import AppClient
from cio_relay.cio.backend import EventsBackend
from cio_relay.cio.pipelines import PipelinesClient
from cio_relay.cio.track import TrackClient
from cio_relay.cio.transport import Transport
from cio_relay.credentials import CredentialsProvider, SecretReader
from cio_relay.observability import record_request
from cio_relay.settings import Settings, get_settings


@dataclass(frozen=True)
class CustomerIO:
    pipelines: PipelinesClient
    app: AppClient
    credentials: CredentialsProvider
    transport: Transport
    track: TrackClient

    def events_backend(self) -> EventsBackend:
        """Pipelines when the secret has a Pipelines key, else Track for site_id + track_api_key.

        Raises ConfigurationError (retried) when the secret has neither, or cannot be read.
        """
        return self.pipelines if self.credentials.get().events_backend == "pipelines" else self.track


def build_customerio(settings: Settings, secret_reader: SecretReader | None = None) -> CustomerIO:
    transport = Transport(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        pool_size=max(settings.email_send_concurrency, settings.events_send_concurrency),
        observer=record_request,
    )
    credentials = CredentialsProvider(settings, secret_reader)
    return CustomerIO(
        pipelines=PipelinesClient(transport, credentials, settings),
        app=AppClient(transport, credentials, settings),
        credentials=credentials,
        transport=transport,
        track=TrackClient(transport, credentials, settings),
    )


@lru_cache(maxsize=1)
def get_customerio() -> CustomerIO:
    """The container's client (one PoolManager, one credentials cache)."""
    return build_customerio(get_settings())
