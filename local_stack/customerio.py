"""A fake Customer.io: the Pipelines, App and Track APIs, each on its own local listener.

Used by unit and integration tests, the soak test, the benchmark and the local sandbox, so it is
thread-safe, never lets a bad client crash it, and answers fast (keep-alive, TCP_NODELAY). It follows
Customer.io's OpenAPI documents (Pipelines, Track, App) and their SDKs:

* Pipelines (``fake.pipelines_url``; ``POST /v1/identify|track|page|screen|group|alias|batch``): HTTP
  Basic ``base64("<pipelines_api_key>:")`` and nothing else (a site id + Track key gets 401). With
  ``X-Strict-Mode: 1`` invalid payloads get 400 ``{"meta": {"errors": [...]}}``; without it they get
  200 ``{}`` and are dropped. A call over 32 KB, or a /v1/batch over 500 KB, gets 200 and is dropped
  (an over-size item of a batch is dropped alone), as the Pipelines document says.
* App (``fake.app_url``; ``POST /v1/send/email|push|sms``, ``POST /v1/customers``, ``GET /v1/segments``):
  ``Bearer <app key>``; errors ``{"meta": {"error": "..."}}``: 400, 403 "Forbidden file type" for an
  attachment type Customer.io refuses, 413 for attachments of 2 MB or more in total; a 429 has the
  body ``{"errors": [{"detail", "status"}]}`` and, when injected with one, ``Retry-After``.
* Track (``fake.track_url``; v1 ``PUT|DELETE /api/v1/customers/{id}``, ``POST /api/v1/customers/{id}/events``,
  ``POST /api/v1/events``, ``/api/v1/merge_customers``, suppress, manual segments; v2 ``/api/v2/entity``
  and ``/api/v2/batch`` with its 207 per-item report): HTTP Basic ``base64("<site_id>:<track_api_key>")``.
* Journeys' limits (identifier 150 bytes, event name 100 bytes, 300 attributes, attribute value 1000
  bytes) apply behind both ingestion APIs: such data is answered 2xx and dropped (a v2 item is
  reported in the 207).
* A workspace (:attr:`FakeCustomerIO.workspace`): identify creates people, deletes remove them (a
  Pipelines track ``User Deleted``, Track's delete, merge or suppress), and people search evaluates
  the filter and pages with opaque ``start`` cursors.
* Fault injection (:meth:`FakeCustomerIO.fail`, :meth:`FakeCustomerIO.chaos`,
  :meth:`FakeCustomerIO.outage`) and a full record of every request (:attr:`FakeCustomerIO.requests`).

Assumptions (not documented by Customer.io): messageId de-duplication is not simulated (every accepted
call is recorded, so tests can see duplicates); the last page of a search answers ``"next": ""``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import itertools
import json
import logging
import random
import socket
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from local_stack import customerio_track as track_rules
from local_stack.customerio_workspace import DEFAULT_PEOPLE, FilterError, Workspace
from local_stack.handlers import ServeEveryMethod

__all__ = [
    "APIS",
    "APP_PATHS",
    "BATCH_PATH",
    "CHAOS_KINDS",
    "PIPELINES_CALL_PATHS",
    "PIPELINES_PATHS",
    "TRACK_V2_BATCH_PATH",
    "TRACK_V2_ENTITY_PATH",
    "FakeCustomerIO",
    "Fault",
    "RecordedRequest",
]

logger = logging.getLogger(__name__)

# --- Customer.io limits and shapes -------------------------------------------------------------------

APIS: tuple[str, ...] = ("pipelines", "app", "track")
PIPELINES_CALL_PATHS: dict[str, str] = {
    "/v1/identify": "identify",
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
}
BATCH_PATH = "/v1/batch"
PIPELINES_PATHS: frozenset[str] = frozenset({*PIPELINES_CALL_PATHS, BATCH_PATH})
SEND_PATHS: dict[str, str] = {"/v1/send/email": "email", "/v1/send/push": "push", "/v1/send/sms": "sms"}
SEND_EMAIL_PATH = "/v1/send/email"
SEND_PUSH_PATH = "/v1/send/push"
SEND_SMS_PATH = "/v1/send/sms"
CUSTOMERS_PATH = "/v1/customers"
SEGMENTS_PATH = "/v1/segments"
APP_PATHS: frozenset[str] = frozenset({*SEND_PATHS, CUSTOMERS_PATH, SEGMENTS_PATH})
TRACK_CUSTOMERS_PREFIX = "/api/v1/customers/"
TRACK_ANONYMOUS_EVENTS_PATH = "/api/v1/events"
TRACK_MERGE_PATH = "/api/v1/merge_customers"
TRACK_SEGMENTS_PREFIX = "/api/v1/segments/"
TRACK_V2_ENTITY_PATH = "/api/v2/entity"
TRACK_V2_BATCH_PATH = "/api/v2/batch"
CALL_TYPES: frozenset[str] = frozenset(PIPELINES_CALL_PATHS.values())
DELETE_EVENT = "User Deleted"

MAX_CALL_BYTES = 32_768
MAX_BATCH_BYTES = 500_000
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DRAIN_BYTES = 64 * 1024 * 1024  # an over-size body up to this is read and discarded (keeps keep-alive)
MAX_ATTACHMENTS_BYTES = 2 * 1024 * 1024
MAX_RECIPIENTS = 15
MAX_SEND_AT_AHEAD_SECONDS = 90 * 24 * 3600
DEFAULT_SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 1000
# Attachment types Customer.io refuses with 403 "Forbidden file type" (executables and scripts).
FORBIDDEN_ATTACHMENT_TYPES: frozenset[str] = frozenset(
    {
        ".ade", ".adp", ".app", ".bat", ".chm", ".cmd", ".com", ".cpl", ".dll", ".exe", ".hta", ".ins",
        ".isp", ".jar", ".js", ".jse", ".lib", ".lnk", ".mde", ".msc", ".msi", ".msp", ".mst", ".pif",
        ".scr", ".sct", ".shb", ".sys", ".vb", ".vbe", ".vbs", ".vxd", ".wsc", ".wsf", ".wsh",
    }
)  # fmt: skip
PUSH_TARGETS = ("all", "last_used")
PUSH_SOUNDS = ("default", "none")

PIPELINES_UNAUTHORIZED: dict[str, Any] = {"meta": {"errors": ["Unauthorized request"]}}
APP_UNAUTHORIZED: dict[str, Any] = {"meta": {"error": "Unauthorized"}}
TRACK_UNAUTHORIZED: dict[str, Any] = {"meta": {"error": "Unauthorized request"}}
NOT_FOUND: dict[str, Any] = {"meta": {"error": "not found"}}
INVALID_JSON: dict[str, Any] = {"meta": {"error": "invalid JSON"}}
FORBIDDEN_FILE_TYPE = "Forbidden file type"
ATTACHMENTS_TOO_LARGE = "Total attachment size exceeds the limit"

CHAOS_KINDS: tuple[str, ...] = ("429", "429-retry-after", "500", "503", "drop", "slow")

DEFAULT_SEGMENTS: tuple[dict[str, Any], ...] = (
    {
        "id": 1,
        "deduplicate_id": "1:1700000000",
        "name": "Active customers",
        "description": "People who were active in the last 30 days",
        "state": "finished",
        "progress": None,
        "type": "dynamic",
        "tags": None,
        "created_at": 1700000000,
        "updated_at": 1700003600,
    },
    {
        "id": 2,
        "deduplicate_id": "2:1700100000",
        "name": "Beta testers",
        "description": "Manually curated beta programme",
        "state": "finished",
        "progress": None,
        "type": "manual",
        "tags": ["beta"],
        "created_at": 1700100000,
        "updated_at": 1700100000,
    },
)


def rate_limited_body(reference: str | None = None) -> dict[str, Any]:
    """The App API's 429 body."""
    ref = reference or uuid.uuid4().hex[:16]
    return {"errors": [{"detail": f"rate limited to 10 requests per 1s (reference {ref})", "status": "429"}]}


# --- public data types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected failure, consumed by one request.

    * ``status``: answer with this status (Customer.io's error body shape unless ``body`` is given).
    * ``retry_after``: value of a ``Retry-After`` header (needs ``status``).
    * ``delay``: seconds to wait before answering (or before dropping). A fault with only a delay is
      "slow": the request is then processed normally and, when valid, accepted.
    * ``drop``: read the request, then close the connection without any response.
    * ``body``: JSON body to answer with instead of the default error body.

    ``Fault()`` is a no-op: useful as a "let this one through" step in a queued sequence.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False
    body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.retry_after is not None and self.status is None:
            raise ValueError("Fault.retry_after needs a status")
        if self.delay < 0:
            raise ValueError("Fault.delay must be >= 0")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault.status {self.status} is not an HTTP status")

    @property
    def kind(self) -> str | None:
        """Label used in ``faults_injected`` and ``RecordedRequest.fault`` (None for a no-op)."""
        if self.drop:
            return "drop"
        if self.status is not None:
            return f"{self.status}-retry-after" if self.retry_after is not None else str(self.status)
        if self.delay > 0:
            return "slow"
        return None

    @property
    def short_circuits(self) -> bool:
        """True when the request is answered by the fault instead of being processed."""
        return self.drop or self.status is not None

    @classmethod
    def rate_limited(cls, retry_after: str | None = None) -> Fault:
        return cls(status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(status=status)

    @classmethod
    def dropped(cls, delay: float = 0.0) -> Fault:
        return cls(drop=True, delay=delay)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls(delay=delay)

    @classmethod
    def from_kind(cls, kind: str, *, slow_delay: float = 0.2, retry_after: str = "1") -> Fault:
        """A fault from a chaos kind: ``"drop"``, ``"slow"``, ``"<status>"`` or ``"<status>-retry-after"``."""
        if kind == "drop":
            return cls(drop=True)
        if kind == "slow":
            return cls(delay=slow_delay)
        status_text, _, suffix = kind.partition("-")
        if status_text.isdigit() and suffix in ("", "retry-after"):
            return cls(status=int(status_text), retry_after=retry_after if suffix else None)
        raise ValueError(f"unknown fault kind {kind!r}")


@dataclass(frozen=True)
class RecordedRequest:
    """What the fake received and how it answered.

    ``body`` is the request body after transfer/content decoding (gzip bodies are decompressed).
    ``status`` is None when the connection was dropped without an answer. ``fault`` is the label of
    the injected fault (``"429"``, ``"500"``, ``"drop"``, ``"slow"``, ``"outage"`` ...) or None.
    ``dropped`` is True when Customer.io answered 2xx but would discard the whole payload (permissive
    mode, an over-size Pipelines call, data over Journeys' limits); ``rejected`` holds the indexes of
    batch items refused or dropped one by one (a Track 207, an over-size item in a Pipelines batch).
    ``api`` is the listener that received it: ``"pipelines"``, ``"app"`` or ``"track"``.
    ``error`` is the validation/size message, if any.
    """

    api: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, or None when it was not JSON
    status: int | None
    fault: str | None
    strict: bool
    received_at: float
    dropped: bool = False
    error: str | None = None
    rejected: frozenset[int] = frozenset()

    @property
    def accepted(self) -> bool:
        """Processed and answered 200 without being dropped (a "slow" fault still counts)."""
        return self.status == 200 and not self.dropped and self.fault in (None, "slow")

    @property
    def taken(self) -> bool:
        """Customer.io kept at least part of it: 200, or a 207 with some items accepted."""
        return self.status in (200, 207) and not self.dropped and self.fault in (None, "slow")


# --- internals ---------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    dropped: bool = False
    error: str | None = None
    rejected: frozenset[int] = frozenset()


@dataclass
class _Chaos:
    rate: float
    rng: random.Random
    kinds: tuple[str, ...]
    slow_delay: float
    retry_after: str
    paths: frozenset[str] | None


class _BodyTooLarge(Exception):
    def __init__(self, drained: bool) -> None:
        super().__init__("request body too large")
        self.drained = drained


class _BadRequest(Exception):
    pass


class _ClientGone(Exception):
    pass


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _try_json(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _present(value: Any) -> bool:
    """A usable identifier: a non-blank string or a number (booleans are not identifiers)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int | float)


def _compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _call_errors(call_type: str, call: dict[str, Any], prefix: str) -> list[str]:
    """Customer.io's per-call rules; ``prefix`` is "" for a single call or "batch[3]." for an item."""
    errors: list[str] = []
    has_id = _present(call.get("userId")) or _present(call.get("anonymousId"))
    if call_type in ("identify", "page", "screen") and not has_id:
        errors.append(f"{prefix}userId or anonymousId is required")
    elif call_type == "track":
        event = call.get("event")
        if not isinstance(event, str) or not event.strip():
            errors.append(f"{prefix}event is required")
        if not has_id:
            errors.append(f"{prefix}userId or anonymousId is required")
    elif call_type == "group" and not _present(call.get("groupId")):
        errors.append(f"{prefix}groupId is required")
    elif call_type == "alias":
        if not _present(call.get("previousId")):
            errors.append(f"{prefix}previousId is required")
        if not _present(call.get("userId")):
            errors.append(f"{prefix}userId is required")
    return errors


def _journeys_call_problem(call_type: str, call: dict[str, Any]) -> str | None:
    """Journeys' limits for one Pipelines call (identifier, event name, traits)."""
    identifier = call.get("userId") if _present(call.get("userId")) else call.get("anonymousId")
    traits = call.get("traits") if call_type == "identify" else None
    return track_rules.journeys_problem(
        identifier if _present(identifier) else None,
        name=call.get("event") if call_type == "track" else None,
        attributes=traits if isinstance(traits, dict) else None,
    )


def _batch_review(payload: dict[str, Any]) -> tuple[list[str], dict[int, str]]:
    """(errors strict mode refuses, {index: why Customer.io drops that item})."""
    items = payload.get("batch")
    if not isinstance(items, list) or not items:
        return ["batch must be a non-empty list"], {}
    errors: list[str] = []
    dropped: dict[int, str] = {}
    for index, item in enumerate(items):
        name = f"batch[{index}]"
        if not isinstance(item, dict):
            errors.append(f"{name} must be a JSON object")
            continue
        call_type = item.get("type")
        if not isinstance(call_type, str) or call_type not in CALL_TYPES:
            errors.append(f"{name}.type must be one of {', '.join(sorted(CALL_TYPES))}")
            continue
        errors.extend(_call_errors(call_type, item, f"{name}."))
        size = _compact_size(item)
        if size > MAX_CALL_BYTES:
            dropped[index] = f"{name} is {size} bytes; the limit is {MAX_CALL_BYTES} bytes per call"
        elif problem := _journeys_call_problem(call_type, item):
            dropped[index] = f"{name}: {problem}"
    return errors, dropped


def _bool_error(payload: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in payload and payload[name] is not None and not isinstance(payload[name], bool):
            return f"{name} must be a boolean"
    return None


def _string_error(payload: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in payload and payload[name] is not None and not isinstance(payload[name], str):
            return f"{name} must be a string"
    return None


def _object_error(payload: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if name in payload and payload[name] is not None and not isinstance(payload[name], dict):
            return f"{name} must be an object"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], fake: FakeCustomerIO, api: str) -> None:
        self.fake = fake
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never print tracebacks from handler threads; a bad client must not disturb the test output.
        logger.debug("fake Customer.io: error while serving %s", client_address, exc_info=True)

    def track_connection(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack_connection(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(ServeEveryMethod):
    server_version = "FakeCustomerIO/1.0"
    # Error answers to unparsable request lines still get a status line (never an HTTP/0.9 reply).
    default_request_version = "HTTP/1.0"
    timeout = None

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def _srv(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        self._srv.track_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._srv.untrack_connection(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # client reset / broken pipe / timeout: just end this connection
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method, ...) as JSON, then close."""
        self.close_connection = True
        payload = json.dumps({"meta": {"error": message or _phrase(code)}}).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            with_body = code >= 200 and code not in (204, 304) and self.command != "HEAD"
            self.send_header("Content-Length", str(len(payload) if with_body else 0))
            self.end_headers()
            if with_body:
                self.wfile.write(payload)
        except OSError:
            pass

    # -- body reading ------------------------------------------------------------------------------

    def _read_exact(self, length: int) -> bytes:
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            raise _ClientGone
        return data

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                raise _ClientGone
            remaining -= len(chunk)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65_537)
            if not line:
                raise _ClientGone
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("invalid chunked encoding") from None
            if size < 0:
                raise _BadRequest("invalid chunked encoding")
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = self.rfile.readline(65_537)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                break
            total += size
            if total > MAX_DRAIN_BYTES:
                raise _BodyTooLarge(drained=False)
            if total > MAX_BODY_BYTES:
                self._drain(size)
            else:
                chunks.append(self._read_exact(size))
            self.rfile.readline(65_537)  # CRLF after the chunk data
        if total > MAX_BODY_BYTES:
            raise _BodyTooLarge(drained=True)
        return b"".join(chunks)

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raw = self._read_chunked()
        else:
            declared = headers.get("content-length")
            if declared is None:
                raw = b""
            else:
                try:
                    length = int(declared.strip())
                except ValueError:
                    raise _BadRequest("invalid Content-Length") from None
                if length < 0:
                    raise _BadRequest("invalid Content-Length")
                if length > MAX_BODY_BYTES:
                    if length <= MAX_DRAIN_BYTES:
                        self._drain(length)
                        raise _BodyTooLarge(drained=True)
                    raise _BodyTooLarge(drained=False)
                raw = self._read_exact(length)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding in ("gzip", "x-gzip", "deflate"):
            wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
            decoder = zlib.decompressobj(wbits)
            try:
                data = decoder.decompress(raw, MAX_BODY_BYTES + 1)
            except zlib.error:
                raise _BadRequest(f"invalid {encoding} body") from None
            if len(data) > MAX_BODY_BYTES:
                raise _BodyTooLarge(drained=True)
            return data
        raise _BadRequest(f"unsupported Content-Encoding {encoding!r}")

    # -- request cycle -----------------------------------------------------------------------------

    def _serve(self) -> None:
        fake = self._srv.fake
        api = self._srv.api
        received_at = time.time()
        method = self.command
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {key.lower(): value for key, value in self.headers.items()}
        strict = headers.get("x-strict-mode", "").strip() == "1"

        def record(
            *,
            body: bytes,
            parsed: Any,
            status: int | None,
            fault: str | None,
            dropped: bool = False,
            error: str | None = None,
            rejected: frozenset[int] = frozenset(),
        ) -> None:
            fake._record(
                RecordedRequest(
                    api=api,
                    method=method,
                    path=path,
                    query=query,
                    headers=headers,
                    body=body,
                    json=parsed,
                    status=status,
                    fault=fault,
                    strict=strict,
                    received_at=received_at,
                    dropped=dropped,
                    error=error,
                    rejected=rejected,
                )
            )

        try:
            body = self._read_body(headers)
        except _ClientGone:
            self.close_connection = True  # the client went away mid-body: nothing to answer
            return
        except _BodyTooLarge as exc:
            if not exc.drained:
                self.close_connection = True
            message = f"request entity too large (limit {MAX_BODY_BYTES} bytes)"
            record(body=b"", parsed=None, status=413, fault=None, error=message)
            self._respond(_Outcome(413, {"meta": {"error": message}}), fake.latency)
            return
        except _BadRequest as exc:
            self.close_connection = True
            record(body=b"", parsed=None, status=400, fault=None, error=str(exc))
            self._respond(_Outcome(400, {"meta": {"error": str(exc)}}), fake.latency)
            return

        fault, label = fake._take_fault(path)
        if fault is not None and fault.drop:
            record(body=body, parsed=_try_json(body), status=None, fault=label)
            if fault.delay > 0:
                time.sleep(fault.delay)
            self.close_connection = True
            return
        if fault is not None and fault.status is not None:
            outcome = fake._fault_outcome(api, fault)
            record(body=body, parsed=_try_json(body), status=outcome.status, fault=label)
            self._respond(outcome, fault.delay + fake.latency)
            return

        try:
            outcome, parsed = fake._process(api, method, path, query, headers, body, strict)
        except Exception as exc:  # a bug in the fake must surface as a 500, never kill the connection thread
            logger.exception("fake Customer.io: error processing %s %s", method, path)
            outcome, parsed = _Outcome(500, {"meta": {"error": f"fake error: {exc}"}}), _try_json(body)
        # Record before answering so a client that reads the answer always finds the record.
        record(
            body=body,
            parsed=parsed,
            status=outcome.status,
            fault=label,
            dropped=outcome.dropped,
            error=outcome.error,
            rejected=outcome.rejected,
        )
        self._respond(outcome, (fault.delay if fault is not None else 0.0) + fake.latency)

    def _respond(self, outcome: _Outcome, delay: float) -> None:
        if delay > 0:
            time.sleep(delay)
        with_body = outcome.status >= 200 and outcome.status not in (204, 304)
        payload = json.dumps(outcome.body, separators=(",", ":")).encode() if with_body else b""
        try:
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True


# --- the fake ----------------------------------------------------------------------------------------


def _route_key(path: str) -> str | None:
    """A Track path with its identifier replaced: faults can be queued on "/api/v1/customers/{id}"."""
    if path.startswith(TRACK_CUSTOMERS_PREFIX):
        rest = path.removeprefix(TRACK_CUSTOMERS_PREFIX)
        _, slash, tail = rest.partition("/")
        return f"{TRACK_CUSTOMERS_PREFIX}{{id}}" + (f"/{tail}" if slash else "")
    if path.startswith(TRACK_SEGMENTS_PREFIX):
        rest = path.removeprefix(TRACK_SEGMENTS_PREFIX)
        _, slash, tail = rest.partition("/")
        return f"{TRACK_SEGMENTS_PREFIX}{{segment_id}}" + (f"/{tail}" if slash else "")
    return None


@dataclass
class _RateLimit:
    """At most `requests` per window of `per_seconds` (fixed windows by `clock`)."""

    requests: int
    per_seconds: float
    paths: frozenset[str] | None
    retry_after: str | None
    clock: Callable[[], float]
    window: int = -1
    used: int = 0

    def over(self, path: str) -> bool:
        if self.paths is not None and path not in self.paths:
            return False
        window = int(self.clock() // self.per_seconds)
        if window != self.window:
            self.window, self.used = window, 0
        self.used += 1
        return self.used > self.requests


class FakeCustomerIO:
    """Local fake of Customer.io's Pipelines, App and Track APIs: three listeners, one per API host.

    Usage::

        with FakeCustomerIO() as fake:
            env = fake.environment()  # CUSTOMERIO_PIPELINES_URL, CUSTOMERIO_APP_URL, CUSTOMERIO_TRACK_URL
            ...
            assert fake.pipelines_calls()[0]["userId"] == "u1"

    A request sent to the wrong listener gets 404, so a swapped base URL fails the test that made it.
    """

    def __init__(
        self,
        *,
        pipelines_api_key: str | None = "pk-test-pipelines",
        app_api_key: str = "app-test-key",
        site_id: str | None = "test-site-id",
        track_api_key: str | None = "test-track-key",
        latency: float = 0.0,
        known_templates: Iterable[int | str] | None = None,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.pipelines_api_key = pipelines_api_key
        self.app_api_key = app_api_key
        self.site_id = site_id
        self.track_api_key = track_api_key
        self.latency = latency
        self.known_templates: set[int | str] | None = (
            set(known_templates) if known_templates is not None else None
        )
        self.workspace = Workspace(DEFAULT_PEOPLE)
        self.segments: list[dict[str, Any]] = [dict(segment) for segment in DEFAULT_SEGMENTS]
        self._host = host
        unknown = set(ports or {}) - set(APIS)
        if unknown:
            raise ValueError(f"ports for unknown APIs: {', '.join(sorted(unknown))}")
        self._ports: dict[str, int] = {api: int((ports or {}).get(api, 0)) for api in APIS}
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._sends: list[dict[str, Any]] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._faults_injected: dict[str, int] = {}
        self._chaos: _Chaos | None = None
        self._outage = False
        self._rate: _RateLimit | None = None
        self._delivery_numbers = itertools.count(1)
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeCustomerIO:
        """Bind each listener (ephemeral ports unless given) and serve on daemon threads. Idempotent.

        After :meth:`stop`, ``start()`` binds the same ports again (simulates a restart).
        """
        if self._servers:
            return self
        servers: dict[str, _Server] = {}
        try:
            for api in APIS:
                servers[api] = _Server((self._host, self._ports[api]), self, api)
        except OSError:
            for server in servers.values():
                server.server_close()
            raise
        for api, server in servers.items():
            self._ports[api] = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.01},
                name=f"fake-customerio-{api}-{self._ports[api]}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()
        self._servers = servers
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening sockets and cut every open (keep-alive) connection."""
        servers, threads = self._servers, self._threads
        if not servers:
            return
        self._servers, self._threads = {}, []
        for server in servers.values():
            server.shutdown()
            server.server_close()
            server.close_all_connections()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeCustomerIO:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def host(self) -> str:
        return self._host

    def port_of(self, api: str) -> int:
        """The port of one listener: ``"pipelines"``, ``"app"`` or ``"track"``."""
        port = self._ports[api]
        if not port:
            raise RuntimeError("FakeCustomerIO is not started")
        return port

    @property
    def pipelines_port(self) -> int:
        return self.port_of("pipelines")

    @property
    def app_port(self) -> int:
        return self.port_of("app")

    @property
    def track_port(self) -> int:
        return self.port_of("track")

    def url_of(self, api: str) -> str:
        return f"http://{self._host}:{self.port_of(api)}"

    @property
    def pipelines_url(self) -> str:
        """Base URL of the Pipelines API (cdp.customer.io), e.g. ``http://127.0.0.1:54321``."""
        return self.url_of("pipelines")

    @property
    def app_url(self) -> str:
        """Base URL of the App API (api.customer.io)."""
        return self.url_of("app")

    @property
    def track_url(self) -> str:
        """Base URL of the Track API (track.customer.io)."""
        return self.url_of("track")

    def environment(self) -> dict[str, str]:
        """The relay's base-URL overrides pointing at this fake."""
        return {
            "CUSTOMERIO_PIPELINES_URL": self.pipelines_url,
            "CUSTOMERIO_APP_URL": self.app_url,
            "CUSTOMERIO_TRACK_URL": self.track_url,
        }

    def pipelines_auth_header(self) -> str:
        """The ``Authorization`` value the fake accepts on the Pipelines API."""
        if not self.pipelines_api_key:
            raise RuntimeError("no Pipelines API key configured")
        return "Basic " + base64.b64encode(f"{self.pipelines_api_key}:".encode()).decode()

    def track_auth_header(self) -> str:
        """The ``Authorization`` value the fake accepts on the Track API."""
        if not (self.site_id and self.track_api_key):
            raise RuntimeError("no Track credentials configured")
        return "Basic " + base64.b64encode(f"{self.site_id}:{self.track_api_key}".encode()).decode()

    def app_auth_header(self) -> str:
        """The ``Authorization`` value the fake accepts on the App API."""
        return f"Bearer {self.app_api_key}"

    # -- workspace ---------------------------------------------------------------------------------

    @property
    def people(self) -> list[dict[str, Any]]:
        """Everyone in the workspace as ``{"id", "email", "cio_id"}`` (see :attr:`workspace` for more)."""
        return [{"id": p["id"], "email": p["email"], "cio_id": p["cio_id"]} for p in self.workspace.people()]

    @people.setter
    def people(self, people: Iterable[Mapping[str, Any]]) -> None:
        self.workspace.set_people(people)

    # -- inspection --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def sends(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Accepted transactional sends (``{"channel", "json", "headers", "delivery_id", "queued_at"}``)."""
        with self._lock:
            return [dict(item) for item in self._sends if channel is None or item["channel"] == channel]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Accepted push and SMS sends (as :meth:`sends`, with their ``path``)."""
        return [item for item in self.sends() if item["channel"] != "email"]

    @property
    def emails(self) -> list[dict[str, Any]]:
        """Accepted /v1/send/email calls: ``{"json", "headers", "delivery_id", "queued_at", ...}`` each."""
        return self.sends("email")

    @property
    def faults_injected(self) -> dict[str, int]:
        """How many faults of each kind were applied (a copy)."""
        with self._lock:
            return dict(self._faults_injected)

    def requests_to(
        self, path: str, method: str | None = None, *, api: str | None = None
    ) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self._requests
                if r.path == path
                and (method is None or r.method == method.upper())
                and (api is None or r.api == api)
            ]

    def pipelines_calls(self, *, strict_only: bool = True) -> list[dict[str, Any]]:
        """Pipelines calls Customer.io kept, batches expanded, each a copy of the call with its ``type``.

        Kept = answered 200, not dropped (nor the item dropped), not faulted (a "slow" fault still
        counts) and, unless ``strict_only=False``, sent with ``X-Strict-Mode: 1``.
        """
        with self._lock:
            records = [r for r in self._requests if r.api == "pipelines" and r.accepted]
        calls: list[dict[str, Any]] = []
        for record in records:
            if strict_only and not record.strict:
                continue
            payload = record.json
            if not isinstance(payload, dict):
                continue
            if record.path == BATCH_PATH:
                calls.extend(
                    dict(item)
                    for index, item in enumerate(payload.get("batch", []))
                    if isinstance(item, dict) and index not in record.rejected
                )
            elif record.path in PIPELINES_CALL_PATHS:
                calls.append({**payload, "type": PIPELINES_CALL_PATHS[record.path]})
        return calls

    def track_calls(self) -> list[dict[str, Any]]:
        """Track operations Customer.io kept, as v2 items (``type``, ``identifiers``, ``action``, ...).

        Each has ``"via"``: the path it came through (a v1 call is translated: identify → action
        ``identify`` with the body as ``attributes``; an event → ``event``/``page``/``screen`` with
        ``data`` as ``attributes``; DELETE → ``delete``). Refused and dropped items are left out.
        """
        with self._lock:
            records = [r for r in self._requests if r.api == "track" and r.taken and r.method != "GET"]
        operations: list[dict[str, Any]] = []
        for record in records:
            operations.extend(_track_operations(record))
        return operations

    @property
    def dropped(self) -> list[RecordedRequest]:
        """Requests answered 2xx that Customer.io would (in part) discard: the silent losses."""
        with self._lock:
            return [r for r in self._requests if r.status in (200, 207) and (r.dropped or r.rejected)]

    def pending_faults(self, path: str | None = None) -> int:
        """Queued faults not yet consumed (for one path key, or all)."""
        with self._lock:
            if path is not None:
                return len(self._faults.get(path, ()))
            return sum(len(queue) for queue in self._faults.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # -- fault injection ---------------------------------------------------------------------------

    def fail(self, path: str, *faults: Fault) -> None:
        """Queue faults for ``path``; one per request, in order.

        ``path`` is exact ("/v1/batch", "/api/v1/customers/u1"), a Track route
        ("/api/v1/customers/{id}", "/api/v1/customers/{id}/events") or "*" for any request on any
        listener. An exact queue is consumed before the route's, and both before "*".
        """
        if not faults:
            raise ValueError("fail() needs at least one Fault")
        with self._lock:
            self._faults.setdefault(path, deque()).extend(faults)

    def chaos(
        self,
        rate: float,
        *,
        seed: int | None = None,
        kinds: Iterable[str] = CHAOS_KINDS,
        slow_delay: float = 0.2,
        retry_after: str = "1",
        paths: Iterable[str] | None = None,
    ) -> None:
        """Fail each request (on ``paths``, default all) with probability ``rate`` and a random kind.

        Kinds: ``"drop"``, ``"slow"`` (wait ``slow_delay`` then answer normally), ``"<status>"`` or
        ``"<status>-retry-after"`` (with ``Retry-After: <retry_after>``). ``chaos(0)`` turns it off.
        With a ``seed`` the sequence of decisions is reproducible for sequential requests.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("chaos rate must be between 0 and 1")
        kinds_tuple = tuple(kinds)
        for kind in kinds_tuple:
            Fault.from_kind(kind)  # validates
        if rate > 0 and not kinds_tuple:
            raise ValueError("chaos needs at least one kind")
        with self._lock:
            if rate == 0:
                self._chaos = None
                return
            self._chaos = _Chaos(
                rate=rate,
                rng=random.Random(seed),
                kinds=kinds_tuple,
                slow_delay=slow_delay,
                retry_after=retry_after,
                paths=frozenset(paths) if paths is not None else None,
            )

    def rate_limit(
        self,
        requests: int | None,
        per_seconds: float = 1.0,
        *,
        paths: Iterable[str] | None = None,
        retry_after: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Answer 429 to requests (on ``paths``, default all) beyond ``requests`` in each window of
        ``per_seconds`` (windows by ``clock``, which a simulation may drive); None lifts the limit."""
        with self._lock:
            self._rate = (
                None
                if requests is None
                else _RateLimit(
                    requests, per_seconds, frozenset(paths) if paths else None, retry_after, clock
                )
            )

    def outage(self, on: bool = True) -> None:
        """While on, every request on every listener is answered 503 (recorded with fault "outage")."""
        with self._lock:
            self._outage = on

    def reset(self) -> None:
        """Forget requests, sends, counters, queued faults, chaos and outage, and put the workspace
        back to its seed; keep configuration (keys, latency, templates, segments)."""
        with self._lock:
            self._requests.clear()
            self._sends.clear()
            self._faults.clear()
            self._faults_injected.clear()
            self._chaos = None
            self._outage = False
        self.workspace.reset()

    # -- internals used by the handler -------------------------------------------------------------

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _count_fault(self, label: str) -> None:
        self._faults_injected[label] = self._faults_injected.get(label, 0) + 1

    def _take_fault(self, path: str) -> tuple[Fault | None, str | None]:
        with self._lock:
            if self._outage:
                self._count_fault("outage")
                return Fault(status=503), "outage"
            if self._rate is not None and self._rate.over(path):
                self._count_fault("rate_limited")
                return Fault(status=429, retry_after=self._rate.retry_after), "rate_limited"
            for key in (path, _route_key(path), "*"):
                queue = self._faults.get(key) if key else None
                if queue:
                    fault = queue.popleft()
                    if not queue:
                        del self._faults[cast(str, key)]
                    label = fault.kind
                    if label is not None:
                        self._count_fault(label)
                    return fault, label
            chaos = self._chaos
            if (
                chaos is not None
                and (chaos.paths is None or path in chaos.paths)
                and chaos.rng.random() < chaos.rate
            ):
                kind = chaos.rng.choice(chaos.kinds)
                self._count_fault(kind)
                fault = Fault.from_kind(kind, slow_delay=chaos.slow_delay, retry_after=chaos.retry_after)
                return fault, kind
        return None, None

    def _fault_outcome(self, api: str, fault: Fault) -> _Outcome:
        status = cast(int, fault.status)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        body: Any
        if fault.body is not None:
            body = fault.body
        elif status < 300:
            body = {}
        elif status == 429 and api == "pipelines":
            body = {"meta": {"errors": ["rate limited"]}}
        elif status == 429:
            body = rate_limited_body()
        elif api == "pipelines" and status == 401:
            body = PIPELINES_UNAUTHORIZED
        elif api == "pipelines" and status < 500:
            body = {"meta": {"errors": [_phrase(status)]}}
        elif api == "app" and status == 401:
            body = APP_UNAUTHORIZED
        elif api == "track" and status == 401:
            body = TRACK_UNAUTHORIZED
        else:
            body = {"meta": {"error": _phrase(status)}}
        return _Outcome(status, body, headers)

    def _process(
        self,
        api: str,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        strict: bool,
    ) -> tuple[_Outcome, Any]:
        if api == "pipelines" and method == "POST" and path in PIPELINES_PATHS:
            return self._pipelines(path, headers, body, strict)
        if api == "app":
            if method == "POST" and path in SEND_PATHS:
                channel = SEND_PATHS[path]
                return self._app(headers, body, lambda payload: self._send(channel, payload, headers))
            if method == "POST" and path == CUSTOMERS_PATH:
                return self._app(headers, body, lambda payload: self._search(query, payload))
            if method == "GET" and path == SEGMENTS_PATH:
                if not self._app_authorized(headers):
                    return _Outcome(401, APP_UNAUTHORIZED), _try_json(body)
                return _Outcome(200, {"segments": list(self.segments)}), _try_json(body)
        if api == "track":
            return self._track(method, path, headers, body)
        return _Outcome(404, NOT_FOUND), _try_json(body)

    # Pipelines -----------------------------------------------------------------------------------

    @staticmethod
    def _basic(headers: dict[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None

    def _pipelines_authorized(self, headers: dict[str, str]) -> bool:
        return bool(self.pipelines_api_key) and self._basic(headers) == f"{self.pipelines_api_key}:"

    def _pipelines(
        self, path: str, headers: dict[str, str], body: bytes, strict: bool
    ) -> tuple[_Outcome, Any]:
        if not self._pipelines_authorized(headers):
            return _Outcome(401, PIPELINES_UNAUTHORIZED, error="Unauthorized request"), _try_json(body)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return _Outcome(400, INVALID_JSON, error="invalid JSON"), None

        limit = MAX_BATCH_BYTES if path == BATCH_PATH else MAX_CALL_BYTES
        if len(body) > limit:
            # "you will receive a 200 response, but the request will not go through", strict or not.
            what = "batch request" if path == BATCH_PATH else "request"
            message = f"{what} body is {len(body)} bytes; the limit is {limit} bytes (dropped)"
            return _Outcome(200, {}, dropped=True, error=message), payload
        errors: list[str]
        item_drops: dict[int, str] = {}
        whole_drop: str | None = None
        if not isinstance(payload, dict):
            errors = ["body must be a JSON object"]
        elif path == BATCH_PATH:
            errors, item_drops = _batch_review(payload)
        else:
            call_type = PIPELINES_CALL_PATHS[path]
            errors = _call_errors(call_type, payload, "")
            whole_drop = None if errors else _journeys_call_problem(call_type, payload)

        if errors:
            message = "; ".join(errors)
            if strict:
                return _Outcome(400, {"meta": {"errors": errors}}, error=message), payload
            # Permissive mode: Customer.io answers 200 and silently drops the payload.
            return _Outcome(200, {}, dropped=True, error=message), payload
        if whole_drop is not None:
            return _Outcome(200, {}, dropped=True, error=f"{whole_drop} (dropped)"), payload
        calls = (
            [(i, c) for i, c in enumerate(payload["batch"]) if i not in item_drops]
            if path == BATCH_PATH
            else [(0, {**payload, "type": PIPELINES_CALL_PATHS[path]})]
        )
        for _, call in calls:
            self._apply_pipelines_call(call)
        error = "; ".join(item_drops.values()) + " (dropped)" if item_drops else None
        return _Outcome(200, {}, error=error, rejected=frozenset(item_drops)), payload

    def _apply_pipelines_call(self, call: dict[str, Any]) -> None:
        user_id = call.get("userId")
        if not _present(user_id):
            return  # anonymous activity makes no person
        if call.get("type") == "identify":
            traits = call.get("traits")
            self.workspace.identify("id", user_id, traits if isinstance(traits, dict) else None)
        elif call.get("type") == "track" and call.get("event") == DELETE_EVENT:
            self.workspace.delete("id", user_id)

    # App API -------------------------------------------------------------------------------------

    def _app_authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and bool(self.app_api_key) and token.strip() == self.app_api_key

    def _app(
        self,
        headers: dict[str, str],
        body: bytes,
        handler: Callable[[Any], _Outcome],
    ) -> tuple[_Outcome, Any]:
        if not self._app_authorized(headers):
            return _Outcome(401, APP_UNAUTHORIZED, error="Unauthorized"), _try_json(body)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return _Outcome(400, INVALID_JSON, error="invalid JSON"), None
        return handler(payload), payload

    @staticmethod
    def _bad_request(message: str, status: int = 400) -> _Outcome:
        return _Outcome(status, {"meta": {"error": message}}, error=message)

    def _template_known(self, template: int | str) -> bool:
        if self.known_templates is None:
            return True
        wanted = str(template).strip().lower()
        return any(str(known).strip().lower() == wanted for known in self.known_templates)

    def _shared_send_error(self, payload: Any, *, template_required: bool) -> str | None:
        """Rules every /v1/send/* body shares: identifiers, template, message_data, send_at, flags."""
        if not isinstance(payload, dict):
            return "request body must be a JSON object"
        identifiers = payload.get("identifiers")
        id_keys = ("id", "email", "cio_id")
        if (
            not isinstance(identifiers, dict)
            or len(identifiers) != 1
            or not any(key in identifiers and _present(identifiers[key]) for key in id_keys)
        ):
            return "identifiers must be an object with exactly one of id, email or cio_id"
        template = payload.get("transactional_message_id")
        if template is None:
            if template_required:
                return "transactional_message_id is required"
        elif isinstance(template, bool) or not isinstance(template, int | str) or not _present(template):
            return "transactional_message_id must be an integer or a trigger name"
        elif not self._template_known(template):
            return "transactional_message_id not found"
        if "message_data" in payload and not isinstance(payload["message_data"], dict | None):
            return "message_data must be an object"
        send_at = payload.get("send_at")
        if send_at is not None:
            if isinstance(send_at, bool) or not isinstance(send_at, int):
                return "send_at must be a unix timestamp (integer seconds)"
            if send_at > int(time.time()) + MAX_SEND_AT_AHEAD_SECONDS:
                return "send_at cannot be more than 90 days in the future"
        return _bool_error(payload, "disable_message_retention", "send_to_unsubscribed", "queue_draft")

    def _email_outcome(self, payload: dict[str, Any]) -> _Outcome | None:
        to = payload.get("to")
        if not isinstance(to, str) or not to.strip():
            return self._bad_request("to is required")
        fields = [to]
        for name in ("cc", "bcc"):
            value = payload.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                return self._bad_request(f"{name} must be a string")
            fields.append(value)
        recipients = [address for _, address in email.utils.getaddresses(fields) if address]
        if not recipients:
            return self._bad_request("to must contain at least one email address")
        if len(recipients) > MAX_RECIPIENTS:
            return self._bad_request(
                f"too many recipients: {len(recipients)} (at most {MAX_RECIPIENTS} across to, cc and bcc)"
            )
        if payload.get("transactional_message_id") is None:
            missing = [name for name in ("body", "subject", "from") if not _present(payload.get(name))]
            if missing:
                return self._bad_request(
                    f"{', '.join(missing)} required: body, subject and from are required "
                    "without a transactional_message_id"
                )
        error = _bool_error(payload, "tracked", "fake_bcc", "disable_css_preprocessing")
        if error:
            return self._bad_request(error)
        return self._attachments_outcome(payload.get("attachments"))

    def _attachments_outcome(self, attachments: Any) -> _Outcome | None:
        if attachments is None:
            return None
        if not isinstance(attachments, dict):
            return self._bad_request("attachments must be an object of filename to base64 content")
        total = 0
        for name, content in attachments.items():
            suffix = PurePosixPath(str(name)).suffix.lower()
            if not suffix:
                return self._bad_request(f"attachment {name} needs a file extension")
            if suffix in FORBIDDEN_ATTACHMENT_TYPES:
                return self._bad_request(FORBIDDEN_FILE_TYPE, status=403)
            if not isinstance(content, str):
                return self._bad_request("Attachment must be base64 encoded")
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                return self._bad_request("Attachment must be base64 encoded")
            total += len(content)
        if total >= MAX_ATTACHMENTS_BYTES:
            return self._bad_request(ATTACHMENTS_TOO_LARGE, status=413)
        return None

    def _push_error(self, payload: dict[str, Any]) -> str | None:
        to = payload.get("to")
        if to is not None and (not isinstance(to, str) or not to.strip()):
            return "to must be all, last_used or a device token"
        sound = payload.get("sound")
        if sound is not None and sound not in PUSH_SOUNDS:
            return f"sound must be one of {', '.join(PUSH_SOUNDS)}"
        custom_payload = payload.get("custom_payload")
        if isinstance(custom_payload, dict) and set(custom_payload) - {"ios", "android"}:
            return "custom_payload may only have ios and android"
        return _string_error(payload, "title", "message", "image_url", "link", "language") or _object_error(
            payload, "custom_data", "custom_device", "custom_payload"
        )

    def _sms_error(self, payload: dict[str, Any]) -> str | None:
        to = payload.get("to")
        if not isinstance(to, str) or not to.strip():
            return "to is required"
        return _string_error(payload, "from", "language") or _bool_error(payload, "tracked")

    def _send(self, channel: str, payload: Any, headers: dict[str, str]) -> _Outcome:
        error = self._shared_send_error(payload, template_required=channel != "email")
        if error is not None:
            return self._bad_request(error)
        if channel == "email":
            refused = self._email_outcome(payload)
            if refused is not None:
                return refused
        else:
            error = self._push_error(payload) if channel == "push" else self._sms_error(payload)
            if error is not None:
                return self._bad_request(error)
        queued_at = int(time.time())
        with self._lock:
            delivery_id = f"fake-{next(self._delivery_numbers):08d}-{uuid.uuid4().hex[:12]}"
            self._sends.append(
                {
                    "channel": channel,
                    "path": f"/v1/send/{channel}",
                    "json": payload,
                    "headers": dict(headers),
                    "delivery_id": delivery_id,
                    "queued_at": queued_at,
                }
            )
        answer: dict[str, Any] = {"delivery_id": delivery_id, "queued_at": queued_at}
        if isinstance(payload.get("send_at"), int) and payload["send_at"] > queued_at:
            answer["send_at"] = payload["send_at"]
        return _Outcome(200, answer)

    def _search(self, query: dict[str, str], payload: Any) -> _Outcome:
        raw_limit = query.get("limit")
        if raw_limit is None:
            limit = DEFAULT_SEARCH_LIMIT
        else:
            try:
                limit = int(raw_limit)
            except ValueError:
                limit = -1
            if not 1 <= limit <= MAX_SEARCH_LIMIT:
                return self._bad_request(f"limit must be an integer between 1 and {MAX_SEARCH_LIMIT}")
        if not isinstance(payload, dict) or not isinstance(payload.get("filter"), dict):
            return self._bad_request("filter is required and must be an object")
        try:
            return _Outcome(200, self.workspace.search(payload["filter"], query.get("start", ""), limit))
        except FilterError as exc:
            return self._bad_request(str(exc))

    # Track API -----------------------------------------------------------------------------------

    def _track_authorized(self, headers: dict[str, str]) -> bool:
        return bool(self.site_id and self.track_api_key) and (
            self._basic(headers) == f"{self.site_id}:{self.track_api_key}"
        )

    def _track(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[_Outcome, Any]:
        route = _route_key(path)
        known = path in (
            TRACK_ANONYMOUS_EVENTS_PATH,
            TRACK_MERGE_PATH,
            TRACK_V2_ENTITY_PATH,
            TRACK_V2_BATCH_PATH,
        )
        if route is None and not known:
            return _Outcome(404, NOT_FOUND), _try_json(body)
        if not self._track_authorized(headers):
            return _Outcome(401, TRACK_UNAUTHORIZED, error="Unauthorized request"), _try_json(body)
        payload: Any = None
        if body:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                return _Outcome(400, {"meta": {"errors": ["invalid JSON"]}}, error="invalid JSON"), None
        if path == TRACK_V2_BATCH_PATH and method == "POST":
            return self._track_v2(payload, body, batch=True), payload
        if path == TRACK_V2_ENTITY_PATH and method == "POST":
            return self._track_v2(payload, body, batch=False), payload
        identifier = path.removeprefix(TRACK_CUSTOMERS_PREFIX).partition("/")[0]
        handlers: dict[tuple[str, str | None], Callable[[], _Outcome]] = {
            ("PUT", f"{TRACK_CUSTOMERS_PREFIX}{{id}}"): lambda: self._track_identify(
                identifier, payload, body
            ),
            ("DELETE", f"{TRACK_CUSTOMERS_PREFIX}{{id}}"): lambda: self._track_delete(identifier),
            ("POST", f"{TRACK_CUSTOMERS_PREFIX}{{id}}/events"): lambda: self._track_event(
                identifier, payload, body
            ),
            ("POST", f"{TRACK_CUSTOMERS_PREFIX}{{id}}/suppress"): lambda: self._track_delete(identifier),
            ("POST", f"{TRACK_CUSTOMERS_PREFIX}{{id}}/unsuppress"): lambda: _Outcome(200, {}),
            ("POST", TRACK_ANONYMOUS_EVENTS_PATH): lambda: self._track_anonymous_event(payload, body),
            ("POST", TRACK_MERGE_PATH): lambda: self._track_merge(payload),
            ("POST", f"{TRACK_SEGMENTS_PREFIX}{{segment_id}}/add_customers"): lambda: self._track_segment(
                path, payload, member=True
            ),
            ("POST", f"{TRACK_SEGMENTS_PREFIX}{{segment_id}}/remove_customers"): lambda: self._track_segment(
                path, payload, member=False
            ),
        }
        handler = handlers.get((method, route if route is not None else path))
        if handler is None or (
            not identifier and route is not None and route.startswith(TRACK_CUSTOMERS_PREFIX)
        ):
            return _Outcome(404, NOT_FOUND), payload
        return handler(), payload

    @staticmethod
    def _track_bad(message: str) -> _Outcome:
        return _Outcome(400, {"meta": {"errors": [message]}}, error=message)

    @staticmethod
    def _track_too_big(body: bytes) -> _Outcome | None:
        if len(body) > MAX_CALL_BYTES:
            message = f"request body is {len(body)} bytes; the limit is {MAX_CALL_BYTES} bytes"
            return _Outcome(400, {"meta": {"errors": [message]}}, error=message)
        return None

    def _track_identify(self, identifier: str, payload: Any, body: bytes) -> _Outcome:
        too_big = self._track_too_big(body)
        if too_big:
            return too_big
        if payload is not None and not isinstance(payload, dict):
            return self._track_bad("request body must be a JSON object")
        kind, value = track_rules.identifier_kind(identifier)
        attributes = dict(payload or {})
        problem = track_rules.journeys_problem(value, attributes=attributes)
        if problem:
            return _Outcome(200, {}, dropped=True, error=f"{problem} (dropped)")
        self.workspace.identify(kind, value, attributes)
        return _Outcome(200, {})

    def _track_delete(self, identifier: str) -> _Outcome:
        kind, value = track_rules.identifier_kind(identifier)
        self.workspace.delete(kind, value)
        return _Outcome(200, {})

    def _track_event(self, identifier: str, payload: Any, body: bytes) -> _Outcome:
        too_big = self._track_too_big(body)
        if too_big:
            return too_big
        error = track_rules.v1_event_error(payload)
        if error:
            return self._track_bad(error)
        _, value = track_rules.identifier_kind(identifier)
        problem = track_rules.journeys_problem(
            value, name=payload["name"] if payload.get("type") in (None, "event") else None
        )
        if problem:
            return _Outcome(200, {}, dropped=True, error=f"{problem} (dropped)")
        return _Outcome(200, {})

    def _track_anonymous_event(self, payload: Any, body: bytes) -> _Outcome:
        too_big = self._track_too_big(body)
        if too_big:
            return too_big
        error = track_rules.v1_event_error(payload)
        if error:
            return self._track_bad(error)
        problem = track_rules.journeys_problem(payload.get("anonymous_id"), name=payload["name"])
        if problem:
            return _Outcome(200, {}, dropped=True, error=f"{problem} (dropped)")
        return _Outcome(200, {})

    def _track_merge(self, payload: Any) -> _Outcome:
        sides: list[tuple[str, Any]] = []
        for side in ("primary", "secondary"):
            value = payload.get(side) if isinstance(payload, dict) else None
            if (
                not isinstance(value, dict)
                or len(value) != 1
                or next(iter(value)) not in ("id", "email", "cio_id")
            ):
                message = f"{side} must have exactly one of id, email or cio_id"
                return _Outcome(400, {"meta": {"error": message}}, error=message)
            sides.append(next(iter(value.items())))
        self.workspace.merge(sides[0], sides[1])
        return _Outcome(200, {})

    def _track_segment(self, path: str, payload: Any, *, member: bool) -> _Outcome:
        raw_id = path.removeprefix(TRACK_SEGMENTS_PREFIX).partition("/")[0]
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not raw_id.isdigit() or not isinstance(ids, list) or not 1 <= len(ids) <= 1000:
            return self._track_bad("ids must be an array of 1 to 1000 identifiers")
        self.workspace.set_segment(int(raw_id), "id", ids, member)
        return _Outcome(200, {})

    def _track_v2(self, payload: Any, body: bytes, *, batch: bool) -> _Outcome:
        limit = MAX_BATCH_BYTES if batch else MAX_CALL_BYTES
        if len(body) > limit:
            message = f"request body is {len(body)} bytes; the limit is {limit} bytes"
            return _Outcome(
                400, {"errors": [{"reason": "too_large", "field": "", "message": message}]}, error=message
            )
        if batch:
            items = payload.get("batch") if isinstance(payload, dict) else None
            if not isinstance(items, list) or not items:
                message = "batch must be a non-empty array"
                return _Outcome(
                    400,
                    {"errors": [{"reason": "invalid", "field": "batch", "message": message}]},
                    error=message,
                )
        else:
            items = [payload]
        errors: list[dict[str, Any]] = []
        dropped: dict[int, str] = {}
        for index, item in enumerate(items):
            problem = track_rules.v2_item_error(item)
            if problem is None and _compact_size(item) > MAX_CALL_BYTES:
                size = _compact_size(item)
                problem = {
                    "reason": "too_large",
                    "field": "",
                    "message": f"{size} bytes; the limit is {MAX_CALL_BYTES}",
                }
            if problem is None and (limit_problem := track_rules.v2_journeys_problem(item)):
                problem = {"reason": "invalid", "field": "", "message": limit_problem}
            if problem is not None:
                errors.append({"batch_index": index, **problem})
                dropped[index] = problem["message"]
            else:
                self._apply_v2(item)
        if not batch and errors:
            only = {key: value for key, value in errors[0].items() if key != "batch_index"}
            return _Outcome(400, {"errors": [only]}, error=only["message"])
        if errors:
            message = "; ".join(f"batch[{e['batch_index']}]: {e['message']}" for e in errors)
            return _Outcome(207, {"errors": errors}, error=message, rejected=frozenset(dropped))
        return _Outcome(200, {})

    def _apply_v2(self, item: dict[str, Any]) -> None:
        if item.get("type") != "person":
            return
        action = item.get("action")
        if action == "merge":
            primary, secondary = item["primary"], item["secondary"]
            self.workspace.merge(next(iter(primary.items())), next(iter(secondary.items())))
            return
        found = track_rules.person_identifier(item)
        if found is None:
            return
        kind, value = found
        if action == "identify":
            attributes = item.get("attributes")
            self.workspace.identify(kind, value, attributes if isinstance(attributes, dict) else None)
        elif action in ("delete", "suppress"):
            self.workspace.delete(kind, value)


def _track_operations(record: RecordedRequest) -> list[dict[str, Any]]:
    """What one kept Track request did, as v2 items (see FakeCustomerIO.track_calls)."""
    payload = record.json
    if record.path in (TRACK_V2_BATCH_PATH, TRACK_V2_ENTITY_PATH):
        items = (
            payload.get("batch", [])
            if record.path == TRACK_V2_BATCH_PATH and isinstance(payload, dict)
            else [payload]
        )
        return [
            {**item, "via": record.path}
            for index, item in enumerate(items)
            if isinstance(item, dict) and index not in record.rejected
        ]
    route = _route_key(record.path)
    if route is None or not route.startswith(TRACK_CUSTOMERS_PREFIX):
        return []
    kind, value = track_rules.identifier_kind(
        record.path.removeprefix(TRACK_CUSTOMERS_PREFIX).partition("/")[0]
    )
    person = {"type": "person", "identifiers": {kind: value}, "via": route}
    if record.method == "PUT":
        return [{**person, "action": "identify", "attributes": dict(payload or {})}]
    if record.method == "DELETE":
        return [{**person, "action": "delete"}]
    if route.endswith("/events") and isinstance(payload, dict):
        operation: dict[str, Any] = {
            **person,
            "action": payload.get("type") or "event",
            "name": payload.get("name"),
        }
        for key in ("id", "timestamp"):
            if key in payload:
                operation[key] = payload[key]
        operation["attributes"] = dict(payload.get("data") or {})
        return [operation]
    return []
