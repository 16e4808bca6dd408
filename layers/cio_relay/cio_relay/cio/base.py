"""What the Pipelines and Track clients share: a POST to the API's host for the credentials' region,
with the API's own authorization, tried once more with re-read credentials when Customer.io rejects them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cio_relay.cio.transport import Response, Transport
from cio_relay.credentials import Credentials, CredentialsProvider


class CredentialedClient:
    """`base_url(region)` is the API's base URL; `authorization(credentials)` its Authorization header;
    `extra_headers` go on every request as well."""

    def __init__(
        self,
        transport: Transport,
        credentials: CredentialsProvider,
        *,
        base_url: Callable[[str | None], str],
        authorization: Callable[[Credentials], str],
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._transport = transport
        self._credentials = credentials
        self._base_url = base_url
        self._authorization = authorization
        self._extra_headers = dict(extra_headers or {})

    def _post(self, path: str, body: bytes) -> Response:
        def send(credentials: Credentials) -> Response:
            return self._transport.request(
                "POST",
                f"{self._base_url(credentials.region)}{path}",
                what=f"POST {path}",
                headers={"Authorization": self._authorization(credentials), **self._extra_headers},
                body=body,
            )

        return self._credentials.with_refresh(send)
