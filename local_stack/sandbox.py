"""The Customer.io sandbox: the fake Customer.io with per-path chaos, and a page that shows it all.

SandboxCustomerIO is local_stack.customerio.FakeCustomerIO (same validation, same answers, the same
small workspace of people) plus a failure rate per path. SandboxPage serves, on its own port, an
auto-refreshing HTML page and the same data as JSON (GET /_sandbox/state): every call Customer.io
received and which backend (Pipelines, Track, App) took it, the people in the workspace, every
dead-letter message with its reason, and the depth of every queue. POST /_sandbox/chaos,
/_sandbox/fail, /_sandbox/outage and /_sandbox/reset change the sandbox while it runs; they answer
JSON, and a bad request gets 400 ``{"code", "message"}`` naming the field.
"""

from __future__ import annotations

import html
import json
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from local_stack.customerio import CHAOS_KINDS, FakeCustomerIO, Fault, RecordedRequest
from local_stack.handlers import Listening, QuietHandler

MAX_CALLS_SHOWN = 500
MAX_PEOPLE_SHOWN = 200
MAX_CONTROL_BODY_BYTES = 64 * 1024
CONTROL_READ_TIMEOUT_SECONDS = 10  # a client that stalls mid-body holds one thread this long, no more
SAFE_HEADERS = ("content-type", "x-strict-mode", "user-agent", "content-encoding")
BACKENDS = {"pipelines": "Pipelines", "track": "Track", "app": "App"}
RETRIES_EXHAUSTED = "gave up after "  # how the delivery policy words a record's last receive

logger = logging.getLogger(__name__)


class SandboxCustomerIO(FakeCustomerIO):
    """FakeCustomerIO with a failure rate per path (`"*"` for every path), reproducible with a seed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rates: dict[str, float] = {}
        self._kinds: tuple[str, ...] = CHAOS_KINDS
        self._rng = random.Random()
        self._seed: int | None = None
        self._chaos_lock = threading.Lock()
        self._retry_after = "1"

    def set_chaos(
        self,
        rate: float = 0.0,
        paths: Mapping[str, float] | None = None,
        *,
        seed: int | None = None,
        kinds: Iterable[str] = CHAOS_KINDS,
        retry_after: str = "1",
    ) -> None:
        rates = {"*": rate, **(paths or {})}
        for path, value in rates.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"chaos rate for {path} must be between 0 and 1")
        chosen = tuple(kinds)
        for kind in chosen:
            Fault.from_kind(kind)  # raises ValueError on an unknown kind
        with self._chaos_lock:
            self._rates = {path: value for path, value in rates.items() if value > 0}
            self._kinds = chosen
            self._rng = random.Random(seed)
            self._seed = seed
            self._retry_after = retry_after

    def chaos_settings(self) -> dict[str, Any]:
        with self._chaos_lock:
            return {"rates": dict(self._rates), "kinds": list(self._kinds), "seed": self._seed}

    def _take_fault(self, path: str) -> tuple[Fault | None, str | None]:
        fault, label = super()._take_fault(path)
        if fault is not None:
            return fault, label
        with self._chaos_lock:
            rate = self._rates.get(path, self._rates.get("*", 0.0))
            if not rate or self._rng.random() >= rate:
                return None, None
            kind = self._rng.choice(self._kinds)
        with self._lock:
            self._count_fault(kind)
        return Fault.from_kind(kind, retry_after=self._retry_after), kind


def dead_letter_note(reason: str | None, *, moved_by_sqs_after: int | None = None) -> str:
    """What the page says about how a message reached its dead-letter queue."""
    if moved_by_sqs_after is not None or not reason:
        limit = f" ({moved_by_sqs_after})" if moved_by_sqs_after else ""
        return f"moved by SQS after maxReceiveCount{limit} receives; last failure below"
    if reason.startswith(RETRIES_EXHAUSTED):
        return "retries exhausted: dead-lettered by the function on its last receive"
    return "dead-lettered by the function (permanent failure)"


def person_view(person: Mapping[str, Any]) -> dict[str, Any]:
    """One person of the sandbox's workspace for the page and the JSON."""
    return {
        "id": person.get("id"),
        "email": person.get("email"),
        "cio_id": person.get("cio_id"),
        "attributes": dict(person.get("attributes") or {}),
        "segments": list(person.get("segments") or []),
    }


def parse_chaos_path(text: str) -> tuple[str, float]:
    """`/v1/batch=0.5` -> ("/v1/batch", 0.5)."""
    path, separator, rate = text.partition("=")
    if not separator or not path.startswith("/"):
        raise ValueError(f"expected PATH=RATE such as /v1/batch=0.5, got {text!r}")
    return path, float(rate)


def call_view(record: RecordedRequest) -> dict[str, Any]:
    """One received call for the page and the JSON (never the Authorization header)."""
    return {
        "at": datetime.fromtimestamp(record.received_at, UTC).isoformat(timespec="milliseconds"),
        "backend": BACKENDS.get(record.api, record.api),
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "status": record.status,
        "fault": record.fault,
        "strict": record.strict,
        "accepted": record.accepted,
        "dropped": record.dropped,
        "rejected_items": sorted(record.rejected),
        "error": record.error,
        "headers": {k: v for k, v in record.headers.items() if k in SAFE_HEADERS},
        "json": record.json,
    }


# ---- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}code,pre{font:12px ui-monospace,monospace}
pre{margin:0;white-space:pre-wrap;max-height:12em;overflow:auto}.ok{color:#176b2c}.bad{color:#b00020}
.muted{color:#777}.pill{border-radius:8px;padding:1px 6px;background:#eee}
"""


def _status_cell(call: Mapping[str, Any]) -> str:
    status = call.get("status")
    label = "dropped (no answer)" if status is None else str(status)
    if call.get("dropped"):
        label += " <span class=pill>discarded by Customer.io</span>"
    elif call.get("rejected_items"):
        items = ", ".join(str(i) for i in call["rejected_items"])
        label += f" <span class=pill>items refused or discarded: {html.escape(items)}</span>"
    if call.get("fault"):
        label += f" <span class=pill>fault: {html.escape(str(call['fault']))}</span>"
    css = "ok" if call.get("accepted") else "bad"
    return f"<td class={css}>{label}</td>"


def _summary(call: Mapping[str, Any]) -> str:
    data = call.get("json")
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("batch"), list) and call.get("backend") == "Track":
        return _track_batch_summary(data["batch"])
    if isinstance(data.get("batch"), list):
        items = data["batch"]
        kinds = ", ".join(
            f"{i.get('type')} {i.get('userId') or i.get('anonymousId') or ''}".strip()
            + (f" “{i.get('event')}”" if i.get("event") else "")
            for i in items[:6]
            if isinstance(i, dict)
        )
        return f"batch of {len(items)}: {kinds}" + (" …" if len(items) > 6 else "")
    path = str(call.get("path") or "")
    if path.startswith("/v1/send/"):
        return (
            f"{path.rsplit('/', 1)[-1]} to {data.get('to')} template {data.get('transactional_message_id')}"
        )
    if path.startswith("/api/v1/customers/"):
        who = path.removeprefix("/api/v1/customers/").partition("/")[0]
        return f"{who} {data.get('name') or ''}".strip()
    who = data.get("userId") or data.get("anonymousId") or data.get("groupId") or ""
    return f"{who} {data.get('event') or ''}".strip()


def _track_batch_summary(items: list[Any]) -> str:
    kinds = ", ".join(
        f"{i.get('action')} {next(iter((i.get('identifiers') or {}).values()), '')}".strip()
        + (f" “{i.get('name')}”" if i.get("name") else "")
        for i in items[:6]
        if isinstance(i, dict)
    )
    return f"batch of {len(items)}: {kinds}" + (" …" if len(items) > 6 else "")


def render_page(state: Mapping[str, Any], refresh_seconds: int = 2) -> str:
    """The sandbox page: queues, dead letters, calls received (newest first)."""
    esc = html.escape
    info = state.get("customerio") or {}
    rows_q = "".join(
        f"<tr><td>{esc(q['logical_id'])}</td><td><code>{esc(q['name'])}</code></td>"
        f"<td>{q['visible']}</td><td>{q['in_flight']}</td><td>{q.get('delayed', 0)}</td>"
        f"<td>{esc(q.get('redrive') or '')}</td></tr>"
        for q in state.get("queues", [])
    )
    rows_d = (
        "".join(
            f"<tr><td>{esc(d['queue'])}</td><td><code>{esc(d['message_id'][:13])}</code></td>"
            f"<td>{esc(str(d.get('failure_status') or ''))}</td><td>{esc(d.get('failure_reason') or '')}"
            f"<div class=muted>{esc(d.get('note') or '')}</div></td>"
            f"<td>{esc(str(d.get('receive_count') or ''))}</td>"
            f"<td><pre>{esc(d.get('body') or '')}</pre></td></tr>"
            for d in state.get("dead_letters", [])
        )
        or "<tr><td colspan=6 class=muted>empty</td></tr>"
    )
    people = state.get("people") or []
    rows_p = (
        "".join(
            f"<tr><td>{esc(str(p.get('id') or ''))}</td><td>{esc(str(p.get('email') or ''))}</td>"
            f"<td><code>{esc(str(p.get('cio_id') or ''))}</code></td>"
            f"<td>{esc(', '.join(str(s) for s in p.get('segments') or []))}</td>"
            f"<td><pre>{esc(json.dumps(p.get('attributes') or {}, sort_keys=True))}</pre></td></tr>"
            for p in people[:MAX_PEOPLE_SHOWN]
        )
        or "<tr><td colspan=5 class=muted>nobody (identify someone through the relay)</td></tr>"
    )
    calls = list(reversed(state.get("calls", [])))
    rows_c = (
        "".join(
            f"<tr><td class=muted>{esc(c['at'][11:23])}</td><td>{esc(str(c.get('backend') or ''))}</td>"
            f"<td>{esc(c['method'])} <code>{esc(c['path'])}</code></td>"
            f"{_status_cell(c)}<td>{esc(_summary(c))}<div class=bad>{esc(c.get('error') or '')}</div></td>"
            f"<td><details><summary>body</summary><pre>{esc(json.dumps(c.get('json'), indent=1))}</pre>"
            f"</details></td></tr>"
            for c in calls[:200]
        )
        or "<tr><td colspan=6 class=muted>nothing yet — try the curl lines printed by make run</td></tr>"
    )
    chaos = info.get("chaos") or {}
    rates = ", ".join(f"{p} {r:.0%}" for p, r in (chaos.get("rates") or {}).items()) or "off"
    faults = ", ".join(f"{k} x{v}" for k, v in (info.get("faults_injected") or {}).items()) or "none"
    mode = info.get("mode", "sandbox")
    note = (
        "<p class=bad>Real Customer.io: calls go to your workspace and are not recorded here.</p>"
        if mode == "real"
        else ""
    )
    return f"""<!doctype html><html><head><meta charset=utf-8>
<meta http-equiv=refresh content="{refresh_seconds}"><title>cio-relay sandbox</title>
<style>{_STYLE}</style></head><body>
<h1>cio-relay local stack — Customer.io {esc(mode)}</h1>{note}
<p>API <code>{esc(str(state.get("api_url", "")))}</code> · chaos: {esc(rates)}
 · faults injected: {esc(faults)} · calls received: {len(state.get("calls", []))}
 · <a href="/_sandbox/state">JSON</a>
 · refreshes every {refresh_seconds} s (<a href="?refresh=0">stop</a>)</p>
<h2>Queues</h2><table><tr><th>queue</th><th>name</th><th>visible</th><th>in flight</th><th>delayed</th>
<th>redrive</th></tr>{rows_q}</table>
<h2>Dead-letter messages</h2><table><tr><th>queue</th><th>message</th><th>status</th><th>reason</th>
<th>receives</th><th>body</th></tr>{rows_d}</table>
<h2>People in the workspace ({len(people)})</h2><p class=muted>Found by POST /v1/customers with
attribute (eq, exists), segment, and/or/not filters; deleted people disappear.</p><table><tr><th>id</th>
<th>email</th><th>cio_id</th><th>segments</th><th>attributes</th></tr>{rows_p}</table>
<h2>Calls Customer.io received (newest first)</h2><table><tr><th>time</th><th>backend</th><th>request</th>
<th>answer</th><th>what</th><th></th></tr>{rows_c}</table>
</body></html>"""


class SandboxPage(Listening):
    """Serves the page, the JSON state and the control endpoints on host:port (0 = ephemeral)."""

    def __init__(
        self,
        *,
        state: Callable[[], dict[str, Any]],
        sandbox: SandboxCustomerIO | None,
        host: str = "127.0.0.1",
        port: int = 3001,
    ) -> None:
        self.state = state
        self.sandbox = sandbox
        self._listen(_Server((host, port), self), host, "sandbox-page")

    def control(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /_sandbox/<action>; raises ControlError (400) on a bad request, LookupError (404)."""
        if action not in CONTROL_ACTIONS:
            raise LookupError(action)
        if self.sandbox is None:
            raise ControlError("the sandbox is off: the stack talks to the real Customer.io")
        unknown = sorted(set(body) - CONTROL_ACTIONS[action])
        if unknown:
            raise ControlError(f"unknown field for {action}: {unknown[0]}", field=unknown[0])
        if action == "chaos":
            self.sandbox.set_chaos(
                _number(body, "rate", 0.0, high=1.0),
                _rates(body.get("paths")),
                seed=_optional_integer(body, "seed"),
                kinds=_kinds(body.get("kinds")),
            )
        elif action == "fail":
            path = body.get("path", "*")
            if not isinstance(path, str) or not (path == "*" or path.startswith("/")):
                raise ControlError("path must be a path such as /v1/batch, or *", field="path")
            retry_after = body.get("retry_after")
            if retry_after is not None and not isinstance(retry_after, str | int):
                raise ControlError("retry_after must be seconds or an HTTP date", field="retry_after")
            status = _optional_integer(body, "status")
            delay = _number(body, "delay", 0.0, high=60.0)
            drop = _boolean(body, "drop", False)
            try:
                fault = Fault(
                    status=status,
                    retry_after=None if retry_after is None else str(retry_after),
                    delay=delay,
                    drop=drop,
                )
            except ValueError as exc:
                raise ControlError(str(exc)) from exc
            count = _optional_integer(body, "count")
            if count is not None and not 1 <= count <= 1000:
                raise ControlError("count must be between 1 and 1000", field="count")
            self.sandbox.fail(path, *[fault] * (count or 1))
        elif action == "outage":
            self.sandbox.outage(_boolean(body, "on", True))
        else:  # reset: calls, queued faults, chaos, outage and the people identified since the start
            self.sandbox.reset()
            self.sandbox.set_chaos(0.0)
        return {"chaos": self.sandbox.chaos_settings()}


CONTROL_ACTIONS: dict[str, frozenset[str]] = {
    "chaos": frozenset({"rate", "paths", "seed", "kinds"}),
    "fail": frozenset({"path", "status", "retry_after", "delay", "drop", "count"}),
    "outage": frozenset({"on"}),
    "reset": frozenset(),
}


class ControlError(ValueError):
    """A control request the sandbox refuses with 400, naming the field at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _number(body: Mapping[str, Any], name: str, default: float, *, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlError(f"{name} must be a number", field=name)
    if not 0 <= value <= high:
        raise ControlError(f"{name} must be between 0 and {high:g}", field=name)
    return float(value)


def _optional_integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ControlError(f"{name} must be an integer", field=name)
    return value


def _boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ControlError(f"{name} must be true or false", field=name)
    return value


def _rates(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ControlError("paths must be an object of path to rate", field="paths")
    return {str(path): _number(value, path, 0.0, high=1.0) for path in value}


def _kinds(value: Any) -> tuple[str, ...]:
    if value is None:
        return CHAOS_KINDS
    if not isinstance(value, list) or not value or not all(isinstance(kind, str) for kind in value):
        raise ControlError(f"kinds must be a non-empty list of {', '.join(CHAOS_KINDS)}", field="kinds")
    for kind in value:
        try:
            Fault.from_kind(kind)
        except ValueError as exc:
            raise ControlError(str(exc), field="kinds") from exc
    return tuple(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], page: SandboxPage) -> None:
        self.page = page
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away or stalls must never print a traceback over the stack's output.
        logger.debug("sandbox page: error while serving %s", client_address, exc_info=True)


class _ClientGone(Exception):
    pass


class _Handler(QuietHandler, BaseHTTPRequestHandler):
    server_version = "cio-relay-sandbox"
    timeout = CONTROL_READ_TIMEOUT_SECONDS

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # reset, broken pipe, or a read that timed out: end this connection quietly
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (a bad request line, an unknown method) as JSON too."""
        self.close_connection = True
        self._json(code, {"code": _CODES.get(code, "error"), "message": message or "bad request"})

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _json(self, status: int, data: Any) -> None:
        self._send(status, "application/json", json.dumps(data, default=str).encode())

    def _error(self, status: int, message: str, field: str | None = None) -> None:
        body: dict[str, Any] = {"code": _CODES.get(status, "error"), "message": message}
        if field:
            body["field"] = field
        self._json(status, body)

    def do_GET(self) -> None:
        page = cast(_Server, self.server).page
        split = urlsplit(self.path)
        if split.path == "/_sandbox/state":
            self._json(200, page.state())
        elif split.path == "/":
            query = dict(parse_qsl(split.query))
            refresh_text = query.get("refresh", "2") or "0"
            refresh = int(refresh_text) if refresh_text.isdigit() else 2
            self._send(200, "text/html; charset=utf-8", render_page(page.state(), refresh or 86_400).encode())
        else:
            self._error(404, f"no such page: {split.path}")

    def _body(self) -> bytes:
        declared = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise ControlError("send the body with a Content-Length")
        try:
            length = int(declared) if declared is not None else 0
        except ValueError:
            raise ControlError("Content-Length must be a number") from None
        if length < 0:
            raise ControlError("Content-Length must be a number")
        if length > MAX_CONTROL_BODY_BYTES:
            self.close_connection = True
            raise ControlError(f"the body must be at most {MAX_CONTROL_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise _ClientGone
        return raw

    def do_POST(self) -> None:
        page = cast(_Server, self.server).page
        path = urlsplit(self.path).path
        if not path.startswith("/_sandbox/"):
            self._error(404, f"no such control: {path}")
            return
        try:
            raw = self._body()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except (ValueError, RecursionError):
                raise ControlError("the body must be JSON") from None
            if not isinstance(body, dict):
                raise ControlError("the body must be a JSON object")
            self._json(200, page.control(path.removeprefix("/_sandbox/"), body))
        except _ClientGone:
            self.close_connection = True
        except LookupError:
            actions = ", ".join(sorted(CONTROL_ACTIONS))
            self._error(404, f"no such control: {path} (POST /_sandbox/{{{actions}}})")
        except ControlError as exc:
            self._error(400, str(exc), exc.field)

    def _method_not_allowed(self) -> None:
        self._error(405, f"{self.command} is not supported here: GET the page or state, POST a control")

    def do_PUT(self) -> None:
        self._method_not_allowed()

    def do_DELETE(self) -> None:
        self._method_not_allowed()

    def do_PATCH(self) -> None:
        self._method_not_allowed()


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 501: "not_implemented"}
