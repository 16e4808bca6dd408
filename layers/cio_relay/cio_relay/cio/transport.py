"""One urllib3 PoolManager per container; statuses, timeouts and dropped connections become errors.py."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from cio_relay import USER_AGENT
from cio_relay.errors import (
    AuthRejected,
    ConnectionDropped,
    CustomerIOError,
    CustomerIOTimeout,
    Permanent,
    RateLimited,
    Retryable,
)

RETRYABLE_STATUSES = frozenset({408, 429})
MAX_MESSAGE_CHARS = 500
# The App API's 429 detail: "rate limited to 10 requests per 1s (reference ...)".
_RATE_WINDOW = re.compile(r"per\s+(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(body: bytes) -> str:
    """Customer.io's own message from `{"meta": {"error"|"errors"}}` and similar shapes."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:MAX_MESSAGE_CHARS] or "(empty body)"
    found: list[str] = []
    if isinstance(data, dict):
        meta = data["meta"] if isinstance(data.get("meta"), dict) else data
        for key in ("error", "errors", "message"):
            value = meta.get(key)
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, list):
                found.extend(_item_message(v) for v in value)
        if not found and isinstance(data.get("errors"), list):  # the App API's 429: {"errors": [{detail}]}
            found.extend(_item_message(v) for v in data["errors"])
    return ("; ".join(found) or text)[:MAX_MESSAGE_CHARS]


def _item_message(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("detail") or item.get("message") or item)
    return str(item)


def rate_window(message: str) -> float | None:
    """The window of a rate limit Customer.io names in its message ("per 1s"), in seconds."""
    found = _RATE_WINDOW.search(message)
    return float(found.group(1)) if found else None


def raise_for_status(response: Response, retry_after: str | None, what: str) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    message = error_message(response.body)
    detail = f"{what}: Customer.io answered {status}: {message}"
    if status in (401, 403):
        raise AuthRejected(detail, status=status)
    seconds = parse_retry_after(retry_after)
    if status == 429:
        # Retry-After when sent; else the window the body names (a per-second limit).
        raise RateLimited(detail, status=status, retry_after=seconds or rate_window(message))
    if status in RETRYABLE_STATUSES or status >= 500 or status < 200 or 300 <= status < 400:
        raise Retryable(detail, status=status, retry_after=seconds)
    raise Permanent(detail, status=status)


class Transport:
    """Sends one request. Never sleeps or retries on its own: backoff belongs to SQS.

    The one exception: a connection that drops before any answer (typically a pooled keep-alive
    connection the server already closed) is tried once more on a fresh connection. That can repeat
    a request Customer.io received, which is the at-least-once choice docs/delivery.md documents.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool: urllib3.PoolManager | None = None,
        pool_size: int = 10,
        clock: Callable[[], float] = time.perf_counter,
        observer: Callable[[float], None] | None = None,
    ) -> None:
        """`observer` is told the elapsed seconds of every request, answered or not (metrics hook).
        `pool_size`: connections kept per host, as many as requests the caller makes at once."""
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool = pool or urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, cert_reqs="CERT_REQUIRED", retries=False
        )
        self._clock = clock
        self._observer = observer
        # Connection pools by "scheme://host[:port]": the PoolManager's own lookup parses and
        # normalises the URL on every request, a good part of a request's CPU time.
        self._hosts: dict[str, urllib3.HTTPConnectionPool] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        retry_dropped: bool = True,
    ) -> Response:
        """Raise Retryable/RateLimited/CustomerIOTimeout/AuthRejected/Permanent, or return a 2xx Response.

        `retry_dropped=False`: a connection dropped before the answer is not tried again (a caller that
        must not repeat a request Customer.io may have acted on) but raised as ConnectionDropped.
        """
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        started = self._clock()
        try:
            raw = self._send(
                method, url, what=what, headers=all_headers, body=body, attempts=2 if retry_dropped else 1
            )
        finally:
            if self._observer is not None:
                self._observer(self._clock() - started)
        response = Response(status=raw.status, body=raw.data, elapsed=self._clock() - started)
        raise_for_status(response, raw.headers.get("Retry-After"), what)
        return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | None,
        attempts: int,
    ) -> urllib3.BaseHTTPResponse:
        origin, target = _split(url)
        hosts = self._hosts.get(origin) or self._hosts.setdefault(
            origin, self._pool.connection_from_url(origin)
        )
        for attempt in range(1, attempts + 1):
            try:
                return hosts.urlopen(
                    method,
                    target,
                    body=body,
                    headers=headers,
                    timeout=self.timeout,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                )
            except ReadTimeoutError as exc:
                raise CustomerIOTimeout(
                    f"{what}: no answer from Customer.io within the read timeout"
                ) from exc
            except ProtocolError as exc:
                if attempt == attempts:
                    raise ConnectionDropped(
                        f"{what}: connection dropped by Customer.io ({_kind(exc)})"
                    ) from exc
            except HTTPError as exc:  # connect timeout, refused, DNS, TLS
                raise Retryable(f"{what}: cannot reach Customer.io ({_kind(exc)})") from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _split(url: str) -> tuple[str, str]:
    """("scheme://host[:port]", "/path?query") of an absolute URL."""
    start = url.find("//") + 2
    slash = url.find("/", start)
    return (url, "/") if slash < 0 else (url[:slash], url[slash:])


def _kind(exc: Exception) -> str:
    # The exception class only: urllib3 messages can carry the URL, and URLs never carry keys here,
    # but a class name is all an operator needs.
    cause = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], Exception) else exc
    return type(cause).__name__


__all__ = ["CustomerIOError", "Response", "Transport", "parse_retry_after", "raise_for_status"]
