"""The Customer.io client: transport, Pipelines API, App API, built once per container."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cio_relay.cio.app_api import AppClient
from cio_relay.cio.pipelines import PipelinesClient
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


def build_customerio(settings: Settings, secret_reader: SecretReader | None = None) -> CustomerIO:
    transport = Transport(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        pool_size=settings.email_send_concurrency,
        observer=record_request,
    )
    credentials = CredentialsProvider(settings, secret_reader)
    return CustomerIO(
        pipelines=PipelinesClient(transport, credentials, settings),
        app=AppClient(transport, credentials, settings),
        credentials=credentials,
        transport=transport,
    )


@lru_cache(maxsize=1)
def get_customerio() -> CustomerIO:
    """The container's client (one PoolManager, one credentials cache)."""
    return build_customerio(get_settings())
