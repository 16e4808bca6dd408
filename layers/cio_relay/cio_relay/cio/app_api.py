"""App API: transactional email, push and SMS, people search (with a page iterator) and segments.

The transactional models are imported where a message is sent, not here: EventsFunction builds this
client for people search and segments only, and building those models is several ms of its cold start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pydantic import ValidationError

from cio_relay.cio.transport import Response, Transport
from cio_relay.credentials import Credentials, CredentialsProvider
from cio_relay.errors import AuthRejected, InvalidRequest, Permanent
from cio_relay.models import invalid_request
from cio_relay.settings import Settings

if TYPE_CHECKING:
    from cio_relay.models.email import SendEmail, SendResult, Transactional

MAX_SEARCH_LIMIT = 1000
SEND_PATHS = {"email": "/v1/send/email", "push": "/v1/send/push", "sms": "/v1/send/sms"}


class AttachmentRefused(Permanent):
    """403 from /v1/send/email about an attachment (a forbidden file type): permanent, not an auth failure."""

    code = "customerio_attachment_refused"


class AppClient:
    """api(-eu).customer.io. Answers come back as Customer.io sent them."""

    def __init__(self, transport: Transport, credentials: CredentialsProvider, settings: Settings) -> None:
        self._transport = transport
        self._credentials = credentials
        self._settings = settings

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        *,
        retry_dropped: bool = True,
        encoded: bytes | None = None,
    ) -> Response:
        """`body` is encoded as JSON, unless `encoded` already holds it."""
        if encoded is None and body is not None:
            encoded = json.dumps(body, separators=(",", ":")).encode()
        query_string = urlencode({k: v for k, v in (query or {}).items() if v is not None})
        suffix = f"{path}?{query_string}" if query_string else path

        def send(credentials: Credentials) -> Response:
            try:
                return self._transport.request(
                    method,
                    f"{self._settings.app_base(credentials.region)}{suffix}",
                    what=f"{method} {path}",
                    headers={"Authorization": credentials.app_authorization()},
                    body=encoded,
                    retry_dropped=retry_dropped,
                )
            except AuthRejected as exc:
                if _refuses_attachment(path, body, exc):
                    raise AttachmentRefused(exc.message, status=exc.status) from exc
                raise

        return self._credentials.with_refresh(send)

    def send(
        self, channel: str, request: Transactional | dict[str, Any], *, retry_dropped: bool = True
    ) -> SendResult:
        """POST /v1/send/<channel> (a dict is sent as given). Any 2xx is a send, whatever its body
        (see SendResult.lenient). `retry_dropped=False` when a repeat must not follow a connection
        dropped mid-request."""
        from cio_relay.models.email import SendResult  # noqa: PLC0415 - module docstring

        if isinstance(request, dict):
            response = self._call("POST", SEND_PATHS[channel], request, retry_dropped=retry_dropped)
        else:
            # What _refuses_attachment reads; the body itself is encoded by the model in one step.
            shown = {"attachments": getattr(request, "attachments", None)}
            response = self._call(
                "POST", SEND_PATHS[channel], shown, retry_dropped=retry_dropped, encoded=request.wire_json()
            )
        try:
            answer = response.json()
        except ValueError:  # a 2xx whose body is not JSON is still a send
            answer = {}
        return SendResult.lenient(answer)

    def send_email(self, request: SendEmail | dict[str, Any]) -> SendResult:
        """A dict is checked against SendEmail first (InvalidRequest names the field)."""
        from cio_relay.models.email import SendEmail  # noqa: PLC0415 - module docstring

        if not isinstance(request, SendEmail):
            try:
                SendEmail.model_validate(request)
            except ValidationError as exc:
                raise invalid_request(exc) from None
        return self.send("email", request)

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


def _refuses_attachment(path: str, body: Any, exc: AuthRejected) -> bool:
    """A 403 from /v1/send/email is Customer.io refusing an attachment's file type when the email has
    attachments or the answer says so; any other 403 means the credentials (re-read, retried)."""
    if exc.status != 403 or path != SEND_PATHS["email"]:
        return False
    has_attachments = isinstance(body, dict) and bool(body.get("attachments"))
    text = exc.message.lower()
    return has_attachments or "file type" in text or "attachment" in text
