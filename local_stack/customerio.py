"""A fake Customer.io HTTP server: the Pipelines API and the App API on one local port.

Used by unit and integration tests, the soak test, the benchmark and the local sandbox, so it is
thread-safe, never lets a bad client crash it, and answers fast (keep-alive, TCP_NODELAY).

Behaviour follows docs/design.md (Customer.io facts):

* Pipelines (``POST /v1/identify|track|page|screen|group|alias|batch``): HTTP Basic
  ``base64("<pipelines_api_key>:")`` or ``base64("<site_id>:<track_api_key>")``. With
  ``X-Strict-Mode: 1`` invalid payloads get 400 ``{"meta": {"errors": [...]}}``; without it the fake
  answers 200 ``{}`` like Customer.io does and records the call as ``dropped=True``.
* App (``POST /v1/send/email``, ``POST /v1/customers``, ``GET /v1/segments``): ``Bearer <app key>``;
  errors are 400 ``{"meta": {"error": "..."}}``.
* Fault injection (:meth:`FakeCustomerIO.fail`, :meth:`FakeCustomerIO.chaos`,
  :meth:`FakeCustomerIO.outage`) and a full record of every request (:attr:`FakeCustomerIO.requests`).

Assumptions (not documented by Customer.io): messageId de-duplication is not simulated (every accepted
call is recorded, so tests can see duplicates); the people-search ``filter`` is validated as an object
but not evaluated (every search pages over :attr:`FakeCustomerIO.people`).
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "APP_PATHS",
    "BATCH_PATH",
    "CHAOS_KINDS",
    "PIPELINES_CALL_PATHS",
    "PIPELINES_PATHS",
    "FakeCustomerIO",
    "Fault",
    "RecordedRequest",
]

logger = logging.getLogger(__name__)

# --- Customer.io limits and shapes -------------------------------------------------------------------

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
SEND_EMAIL_PATH = "/v1/send/email"
CUSTOMERS_PATH = "/v1/customers"
SEGMENTS_PATH = "/v1/segments"
SEND_PUSH_PATH = "/v1/send/push"
SEND_SMS_PATH = "/v1/send/sms"
APP_PATHS: frozenset[str] = frozenset(
    {SEND_EMAIL_PATH, SEND_PUSH_PATH, SEND_SMS_PATH, CUSTOMERS_PATH, SEGMENTS_PATH}
)
CALL_TYPES: frozenset[str] = frozenset(PIPELINES_CALL_PATHS.values())

MAX_CALL_BYTES = 32_768
MAX_BATCH_BYTES = 500_000
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DRAIN_BYTES = 64 * 1024 * 1024  # an over-size body up to this is read and discarded (keeps keep-alive)
MAX_ATTACHMENTS_BYTES = 2 * 1024 * 1024
MAX_RECIPIENTS = 15
MAX_SEND_AT_AHEAD_SECONDS = 90 * 24 * 3600
DEFAULT_SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 1000

RATE_LIMIT_MESSAGE = "Your request is over the 10-per-second limit."
PIPELINES_UNAUTHORIZED: dict[str, Any] = {"meta": {"errors": ["Unauthorized request"]}}
APP_UNAUTHORIZED: dict[str, Any] = {"meta": {"error": "Unauthorized"}}
NOT_FOUND: dict[str, Any] = {"meta": {"error": "not found"}}
INVALID_JSON: dict[str, Any] = {"meta": {"error": "invalid JSON"}}

CHAOS_KINDS: tuple[str, ...] = ("429", "429-retry-after", "500", "503", "drop", "slow")

DEFAULT_PEOPLE: tuple[dict[str, Any], ...] = (
    {"id": "user-1", "email": "ada@example.com", "cio_id": "a1b2c3d4e5f60001"},
    {"id": "user-2", "email": "grace@example.com", "cio_id": "a1b2c3d4e5f60002"},
    {"id": "user-3", "email": "alan@example.com", "cio_id": "a1b2c3d4e5f60003"},
)

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
    ``dropped`` is True when Customer.io would have silently discarded the payload (permissive mode).
    ``error`` is the validation/size message, if any.
    """

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

    @property
    def accepted(self) -> bool:
        """Processed and answered 200 without being dropped (a "slow" fault still counts)."""
        return self.status == 200 and not self.dropped and self.fault in (None, "slow")


# --- internals ---------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    dropped: bool = False
    error: str | None = None


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


def _batch_errors(payload: dict[str, Any]) -> list[str]:
    items = payload.get("batch")
    if not isinstance(items, list) or not items:
        return ["batch must be a non-empty list"]
    errors: list[str] = []
    for index, item in enumerate(items):
        name = f"batch[{index}]"
        if not isinstance(item, dict):
            errors.append(f"{name} must be a JSON object")
            continue
        call_type = item.get("type")
        if not isinstance(call_type, str) or call_type not in CALL_TYPES:
            errors.append(f"{name}.type must be one of {', '.join(sorted(CALL_TYPES))}")
            continue
        size = _compact_size(item)
        if size > MAX_CALL_BYTES:
            errors.append(f"{name} is {size} bytes; the limit is {MAX_CALL_BYTES} bytes per call")
        errors.extend(_call_errors(call_type, item, f"{name}."))
    return errors


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], fake: FakeCustomerIO) -> None:
        self.fake = fake
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "FakeCustomerIO/1.0"
    sys_version = ""
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

    def log_message(self, format: str, *args: Any) -> None:
        return

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

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

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
        ) -> None:
            fake._record(
                RecordedRequest(
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
            outcome = fake._fault_outcome(path, fault)
            record(body=body, parsed=_try_json(body), status=outcome.status, fault=label)
            self._respond(outcome, fault.delay + fake.latency)
            return

        try:
            outcome, parsed = fake._process(method, path, query, headers, body, strict)
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


class FakeCustomerIO:
    """Local fake of Customer.io's Pipelines and App APIs (one server, one port, both APIs).

    Usage::

        with FakeCustomerIO() as fake:
            ...  # point the client at fake.url
            assert fake.pipelines_calls()[0]["userId"] == "u1"
    """

    def __init__(
        self,
        *,
        pipelines_api_key: str | None = "pk-test-pipelines",
        app_api_key: str = "app-test-key",
        site_id: str | None = None,
        track_api_key: str | None = None,
        latency: float = 0.0,
        known_templates: Iterable[int | str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.pipelines_api_key = pipelines_api_key
        self.app_api_key = app_api_key
        self.site_id = site_id
        self.track_api_key = track_api_key
        self.latency = latency
        self.known_templates: set[int | str] | None = (
            set(known_templates) if known_templates is not None else None
        )
        self.people: list[dict[str, Any]] = [dict(person) for person in DEFAULT_PEOPLE]
        self.segments: list[dict[str, Any]] = [dict(segment) for segment in DEFAULT_SEGMENTS]
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._emails: list[dict[str, Any]] = []
        self._messages: list[dict[str, Any]] = []  # accepted push and SMS sends
        self._faults: dict[str, deque[Fault]] = {}
        self._faults_injected: dict[str, int] = {}
        self._chaos: _Chaos | None = None
        self._outage = False
        self._delivery_numbers = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeCustomerIO:
        """Bind (an ephemeral port unless one was given) and serve on a daemon thread. Idempotent.

        After :meth:`stop`, ``start()`` binds the same port again (simulates a restart).
        """
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), self)
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"fake-customerio-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening socket and cut every open (keep-alive) connection."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server, self._thread = None, None
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if thread is not None:
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
        return self._server is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeCustomerIO is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL for both APIs, e.g. ``http://127.0.0.1:54321`` (paths start with /v1)."""
        return f"http://{self._host}:{self.port}"

    @property
    def pipelines_url(self) -> str:
        return self.url

    @property
    def app_url(self) -> str:
        return self.url

    def pipelines_auth_header(self) -> str:
        """The ``Authorization`` value the fake accepts on the Pipelines API."""
        if self.pipelines_api_key:
            token = f"{self.pipelines_api_key}:"
        elif self.site_id and self.track_api_key:
            token = f"{self.site_id}:{self.track_api_key}"
        else:
            raise RuntimeError("no Pipelines credentials configured")
        return "Basic " + base64.b64encode(token.encode()).decode()

    def app_auth_header(self) -> str:
        """The ``Authorization`` value the fake accepts on the App API."""
        return f"Bearer {self.app_api_key}"

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

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Accepted push and SMS sends: ``{"path", "json", "headers", "delivery_id", "queued_at"}``."""
        with self._lock:
            return [dict(item) for item in self._messages]

    @property
    def emails(self) -> list[dict[str, Any]]:
        """Accepted sends: ``{"json", "headers", "delivery_id", "queued_at"}`` each (a copy)."""
        with self._lock:
            return [dict(item) for item in self._emails]

    @property
    def faults_injected(self) -> dict[str, int]:
        """How many faults of each kind were applied (a copy)."""
        with self._lock:
            return dict(self._faults_injected)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self._requests if r.path == path and (method is None or r.method == method.upper())
            ]

    def pipelines_calls(self, *, strict_only: bool = True) -> list[dict[str, Any]]:
        """Accepted Pipelines calls, batches expanded, each a copy of the call with its ``type``.

        Accepted = answered 200, not dropped, not faulted (a "slow" fault still counts) and, unless
        ``strict_only=False``, sent with ``X-Strict-Mode: 1``.
        """
        with self._lock:
            records = [r for r in self._requests if r.path in PIPELINES_PATHS and r.accepted]
        calls: list[dict[str, Any]] = []
        for record in records:
            if strict_only and not record.strict:
                continue
            payload = record.json
            if not isinstance(payload, dict):
                continue
            if record.path == BATCH_PATH:
                calls.extend(dict(item) for item in payload.get("batch", []) if isinstance(item, dict))
            else:
                calls.append({**payload, "type": PIPELINES_CALL_PATHS[record.path]})
        return calls

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
        """Queue faults for ``path`` (exact, e.g. "/v1/batch", or "*" for any); one per request, in order.

        A path-specific queue is consumed before the "*" queue.
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

    def outage(self, on: bool = True) -> None:
        """While on, every request is answered 503 (recorded with fault "outage")."""
        with self._lock:
            self._outage = on

    def reset(self) -> None:
        """Forget recorded requests, emails, counters, queued faults, chaos and outage; keep configuration."""
        with self._lock:
            self._requests.clear()
            self._emails.clear()
            self._messages.clear()
            self._faults.clear()
            self._faults_injected.clear()
            self._chaos = None
            self._outage = False

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
            for key in (path, "*"):
                queue = self._faults.get(key)
                if queue:
                    fault = queue.popleft()
                    if not queue:
                        del self._faults[key]
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

    def _fault_outcome(self, path: str, fault: Fault) -> _Outcome:
        status = cast(int, fault.status)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        body: Any
        if fault.body is not None:
            body = fault.body
        elif status < 300:
            body = {}
        elif status == 429:
            body = {"meta": {"error": RATE_LIMIT_MESSAGE}}
        elif path in PIPELINES_PATHS and status == 401:
            body = PIPELINES_UNAUTHORIZED
        elif path in PIPELINES_PATHS and status < 500:
            body = {"meta": {"errors": [_phrase(status)]}}
        elif status == 401:
            body = APP_UNAUTHORIZED
        else:
            body = {"meta": {"error": _phrase(status)}}
        return _Outcome(status, body, headers)

    def _process(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        strict: bool,
    ) -> tuple[_Outcome, Any]:
        if method == "POST" and path in PIPELINES_PATHS:
            return self._pipelines(path, headers, body, strict)
        if method == "POST" and path == SEND_EMAIL_PATH:
            return self._app(headers, body, lambda payload: self._send_email(payload, headers))
        if method == "POST" and path in (SEND_PUSH_PATH, SEND_SMS_PATH):
            return self._app(headers, body, lambda payload: self._send_message(path, payload, headers))
        if method == "POST" and path == CUSTOMERS_PATH:
            return self._app(headers, body, lambda payload: self._search(query, payload))
        if method == "GET" and path == SEGMENTS_PATH:
            if not self._app_authorized(headers):
                return _Outcome(401, APP_UNAUTHORIZED), _try_json(body)
            return _Outcome(200, {"segments": list(self.segments)}), _try_json(body)
        return _Outcome(404, NOT_FOUND), _try_json(body)

    # Pipelines -----------------------------------------------------------------------------------

    def _pipelines_authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        allowed: set[str] = set()
        if self.pipelines_api_key:
            allowed.add(f"{self.pipelines_api_key}:")
        if self.site_id and self.track_api_key:
            allowed.add(f"{self.site_id}:{self.track_api_key}")
        return decoded in allowed

    def _pipelines(
        self, path: str, headers: dict[str, str], body: bytes, strict: bool
    ) -> tuple[_Outcome, Any]:
        if not self._pipelines_authorized(headers):
            return _Outcome(401, PIPELINES_UNAUTHORIZED, error="Unauthorized request"), _try_json(body)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return _Outcome(400, INVALID_JSON, error="invalid JSON"), None

        errors: list[str]
        if path == BATCH_PATH:
            limit = MAX_BATCH_BYTES
            size_error = f"batch request body is {len(body)} bytes; the limit is {limit} bytes"
        else:
            limit = MAX_CALL_BYTES
            size_error = f"request body is {len(body)} bytes; the limit is {limit} bytes per call"
        if len(body) > limit:
            errors = [size_error]
        elif not isinstance(payload, dict):
            errors = ["body must be a JSON object"]
        elif path == BATCH_PATH:
            errors = _batch_errors(payload)
        else:
            errors = _call_errors(PIPELINES_CALL_PATHS[path], payload, "")

        if errors:
            message = "; ".join(errors)
            if strict:
                return _Outcome(400, {"meta": {"errors": errors}}, error=message), payload
            # Permissive mode: Customer.io answers 200 and silently drops the payload.
            return _Outcome(200, {}, dropped=True, error=message), payload
        return _Outcome(200, {}), payload

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
    def _bad_request(message: str) -> _Outcome:
        return _Outcome(400, {"meta": {"error": message}}, error=message)

    def _template_known(self, template: int | str) -> bool:
        if self.known_templates is None:
            return True
        wanted = str(template).strip().lower()
        return any(str(known).strip().lower() == wanted for known in self.known_templates)

    def _email_error(self, payload: Any) -> str | None:
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
        to = payload.get("to")
        if not isinstance(to, str) or not to.strip():
            return "to is required"
        fields = [to]
        for name in ("cc", "bcc"):
            value = payload.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                return f"{name} must be a string"
            fields.append(value)
        recipients = [address for _, address in email.utils.getaddresses(fields) if address]
        if not recipients:
            return "to must contain at least one email address"
        if len(recipients) > MAX_RECIPIENTS:
            return f"too many recipients: {len(recipients)} (at most {MAX_RECIPIENTS} across to, cc and bcc)"
        template = payload.get("transactional_message_id")
        if template is None:
            missing = [name for name in ("body", "subject", "from") if not _present(payload.get(name))]
            if missing:
                return (
                    f"{', '.join(missing)} required: body, subject and from are required "
                    "without a transactional_message_id"
                )
        elif isinstance(template, bool) or not isinstance(template, int | str) or not _present(template):
            return "transactional_message_id must be an integer or a trigger name"
        elif not self._template_known(template):
            return "transactional_message_id not found"
        if "message_data" in payload and not isinstance(payload["message_data"], dict | None):
            return "message_data must be an object"
        attachments = payload.get("attachments")
        if attachments is not None:
            if not isinstance(attachments, dict):
                return "attachments must be an object of filename to base64 content"
            total = 0
            for name, content in attachments.items():
                if not isinstance(content, str):
                    return f"attachment {name} must be a base64 string"
                try:
                    base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    return f"attachment {name} is not valid base64"
                total += len(content)
            if total >= MAX_ATTACHMENTS_BYTES:
                return f"attachments are {total} bytes encoded; they must be smaller than 2 MB in total"
        send_at = payload.get("send_at")
        if send_at is not None:
            if isinstance(send_at, bool) or not isinstance(send_at, int):
                return "send_at must be a unix timestamp (integer seconds)"
            if send_at > int(time.time()) + MAX_SEND_AT_AHEAD_SECONDS:
                return "send_at cannot be more than 90 days in the future"
        return None

    def _send_email(self, payload: Any, headers: dict[str, str]) -> _Outcome:
        error = self._email_error(payload)
        if error is not None:
            return self._bad_request(error)
        queued_at = int(time.time())
        with self._lock:
            delivery_id = f"fake-{next(self._delivery_numbers):08d}-{uuid.uuid4().hex[:12]}"
            self._emails.append(
                {
                    "json": payload,
                    "headers": dict(headers),
                    "delivery_id": delivery_id,
                    "queued_at": queued_at,
                }
            )
        return _Outcome(200, {"delivery_id": delivery_id, "queued_at": queued_at})

    def _send_message(self, path: str, payload: Any, headers: dict[str, str]) -> _Outcome:
        """/v1/send/push and /v1/send/sms: transactional_message_id and identifiers (and `to` for SMS)."""
        required = ("transactional_message_id", "identifiers", *(("to",) if path == SEND_SMS_PATH else ()))
        if not isinstance(payload, dict):
            return self._bad_request("request body must be a JSON object")
        missing = [name for name in required if payload.get(name) in (None, "", {})]
        if missing:
            return self._bad_request(f"{', '.join(missing)} required")
        identifiers = payload["identifiers"]
        if not isinstance(identifiers, dict) or len(identifiers) != 1:
            return self._bad_request("identifiers must be an object with exactly one of id, email or cio_id")
        if not self._template_known(payload["transactional_message_id"]):
            return self._bad_request("transactional_message_id not found")
        queued_at = int(time.time())
        with self._lock:
            delivery_id = f"fake-{next(self._delivery_numbers):08d}-{uuid.uuid4().hex[:12]}"
            sent = {"json": payload, "headers": dict(headers), "delivery_id": delivery_id}
            self._messages.append({"path": path, **sent, "queued_at": queued_at})
        return _Outcome(200, {"delivery_id": delivery_id, "queued_at": queued_at})

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
        raw_start = query.get("start", "")
        try:
            offset = int(raw_start) if raw_start else 0
        except ValueError:
            offset = -1
        if offset < 0:
            return self._bad_request("start is not a valid pagination token")
        if not isinstance(payload, dict) or not isinstance(payload.get("filter"), dict):
            return self._bad_request("filter is required and must be an object")
        people = list(self.people)
        page = people[offset : offset + limit]
        identifiers = [
            {"email": person.get("email"), "id": person.get("id"), "cio_id": person.get("cio_id")}
            for person in page
        ]
        next_token = str(offset + limit) if offset + limit < len(people) else ""
        return _Outcome(
            200,
            {"identifiers": identifiers, "ids": [person.get("id") for person in page], "next": next_token},
        )
