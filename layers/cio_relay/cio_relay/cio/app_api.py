"""App API: transactional email, people search (with a page iterator) and segments, Bearer auth.

The email models are imported where an email is sent, not here: EventsFunction builds this client
for people search and segments only, and building those models is several ms of its cold start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pydantic import ValidationError

from cio_relay.cio.transport import Response, Transport
from cio_relay.credentials import Credentials, CredentialsProvider
from cio_relay.errors import InvalidRequest
from cio_relay.models import invalid_request
from cio_relay.settings import Settings

if TYPE_CHECKING:
    from cio_relay.models.email import SendEmail, SendEmailResult

MAX_SEARCH_LIMIT = 1000


class AppClient:
    """api(-eu).customer.io. Answers come back as Customer.io sent them."""

    def __init__(self, transport: Transport, credentials: CredentialsProvider, settings: Settings) -> None:
        self._transport = transport
        self._credentials = credentials
        self._settings = settings

    def _call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Response:
        encoded = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        query_string = urlencode({k: v for k, v in (query or {}).items() if v is not None})
        suffix = f"{path}?{query_string}" if query_string else path

        def send(credentials: Credentials) -> Response:
            return self._transport.request(
                method,
                f"{self._settings.app_base(credentials.region)}{suffix}",
                what=f"{method} {path}",
                headers={"Authorization": credentials.app_authorization()},
                body=encoded,
            )

        return self._credentials.with_refresh(send)

    def send_email(self, request: SendEmail | dict[str, Any]) -> SendEmailResult:
        """A dict is checked against SendEmail first (InvalidRequest names the field) and sent as given."""
        from cio_relay.models.email import SendEmail, SendEmailResult  # noqa: PLC0415 - module docstring

        if not isinstance(request, SendEmail):
            try:
                SendEmail.model_validate(request)
            except ValidationError as exc:
                raise invalid_request(exc) from None
        body = request.wire() if isinstance(request, SendEmail) else request
        return SendEmailResult.model_validate(self._call("POST", "/v1/send/email", body).json())

    def search_people(
        self, filter: dict[str, Any], *, start: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """One page: `{"identifiers": [...], "ids": [...], "next": "..."}`; pass `next` as `start`."""
        if limit is not None and not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise InvalidRequest(f"must be between 1 and {MAX_SEARCH_LIMIT}", field="limit")
        response = self._call("POST", "/v1/customers", {"filter": filter}, {"start": start, "limit": limit})
        page: dict[str, Any] = response.json()
        return page

    def iter_people(
        self, filter: dict[str, Any], *, page_size: int = MAX_SEARCH_LIMIT
    ) -> Iterator[dict[str, Any]]:
        """Every person matching `filter`, page after page, as Customer.io's identifiers objects."""
        start: str | None = None
        while True:
            page = self.search_people(filter, start=start, limit=page_size)
            yield from page.get("identifiers") or [{"id": i} for i in page.get("ids") or []]
            start = page.get("next") or None
            if not start:
                return

    def list_segments(self) -> dict[str, Any]:
        segments: dict[str, Any] = self._call("GET", "/v1/segments").json()
        return segments
