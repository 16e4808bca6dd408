"""The Customer.io sandbox: the fake Customer.io with per-path chaos, and a page that shows it all.

SandboxCustomerIO is local_stack.customerio.FakeCustomerIO (same validation, same answers) plus a
failure rate per path. SandboxPage serves, on its own port, an auto-refreshing HTML page and the same
data as JSON (GET /_sandbox/state): every call Customer.io received, every dead-letter message with
its reason, and the depth of every queue. POST /_sandbox/chaos, /_sandbox/fail, /_sandbox/outage and
/_sandbox/reset change the sandbox while it runs.
"""

from __future__ import annotations

import html
import json
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from local_stack.customerio import CHAOS_KINDS, FakeCustomerIO, Fault, RecordedRequest

MAX_CALLS_SHOWN = 500
SAFE_HEADERS = ("content-type", "x-strict-mode", "user-agent", "content-encoding")


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
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "status": record.status,
        "fault": record.fault,
        "strict": record.strict,
        "accepted": record.accepted,
        "dropped": record.dropped,
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
    if call.get("fault"):
        label += f" <span class=pill>fault: {html.escape(str(call['fault']))}</span>"
    css = "ok" if call.get("accepted") else "bad"
    return f"<td class={css}>{label}</td>"


def _summary(call: Mapping[str, Any]) -> str:
    data = call.get("json")
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("batch"), list):
        items = data["batch"]
        kinds = ", ".join(
            f"{i.get('type')} {i.get('userId') or i.get('anonymousId') or ''}".strip()
            + (f" “{i.get('event')}”" if i.get("event") else "")
            for i in items[:6]
            if isinstance(i, dict)
        )
        return f"batch of {len(items)}: {kinds}" + (" …" if len(items) > 6 else "")
    if call.get("path") == "/v1/send/email":
        return f"to {data.get('to')} template {data.get('transactional_message_id')}"
    who = data.get("userId") or data.get("anonymousId") or data.get("groupId") or ""
    return f"{who} {data.get('event') or ''}".strip()


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
    calls = list(reversed(state.get("calls", [])))
    rows_c = (
        "".join(
            f"<tr><td class=muted>{esc(c['at'][11:23])}</td>"
            f"<td>{esc(c['method'])} <code>{esc(c['path'])}</code></td>"
            f"{_status_cell(c)}<td>{esc(_summary(c))}<div class=bad>{esc(c.get('error') or '')}</div></td>"
            f"<td><details><summary>body</summary><pre>{esc(json.dumps(c.get('json'), indent=1))}</pre>"
            f"</details></td></tr>"
            for c in calls[:200]
        )
        or "<tr><td colspan=5 class=muted>nothing yet — try the curl lines printed by make run</td></tr>"
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
<h2>Calls Customer.io received (newest first)</h2><table><tr><th>time</th><th>request</th><th>answer</th>
<th>what</th><th></th></tr>{rows_c}</table>
</body></html>"""


class SandboxPage:
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
        self._host = host
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-page", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a server never started
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def control(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /_sandbox/<action>; raises ValueError on a bad request."""
        if self.sandbox is None:
            raise ValueError("the sandbox is off: the stack talks to the real Customer.io")
        if action == "chaos":
            self.sandbox.set_chaos(
                float(body.get("rate", 0.0)),
                {str(k): float(v) for k, v in (body.get("paths") or {}).items()},
                seed=body.get("seed"),
                kinds=body.get("kinds") or CHAOS_KINDS,
            )
        elif action == "fail":
            fault = Fault(
                status=body.get("status"),
                retry_after=body.get("retry_after"),
                delay=float(body.get("delay", 0.0)),
                drop=bool(body.get("drop", False)),
            )
            self.sandbox.fail(str(body.get("path", "*")), *[fault] * int(body.get("count", 1)))
        elif action == "outage":
            self.sandbox.outage(bool(body.get("on", True)))
        elif action == "reset":
            settings = self.sandbox.chaos_settings()
            self.sandbox.reset()  # forgets calls and queued faults; the chaos rates stay
            rates = settings["rates"]
            self.sandbox.set_chaos(rates.pop("*", 0.0), rates, seed=settings["seed"], kinds=settings["kinds"])
        else:
            raise LookupError(action)
        return {"chaos": self.sandbox.chaos_settings()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], page: SandboxPage) -> None:
        self.page = page
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "cio-relay-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, "application/json", json.dumps(data, default=str).encode())

    def do_GET(self) -> None:
        page = cast(_Server, self.server).page
        split = urlsplit(self.path)
        if split.path == "/_sandbox/state":
            self._json(200, page.state())
        elif split.path == "/":
            query = dict(parse_qsl(split.query))
            refresh = int(query.get("refresh", "2") or 0) or 86_400
            self._send(200, "text/html; charset=utf-8", render_page(page.state(), refresh).encode())
        else:
            self._json(404, {"message": "not found"})

    def do_POST(self) -> None:
        page = cast(_Server, self.server).page
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        action = urlsplit(self.path).path.removeprefix("/_sandbox/")
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            self._json(200, page.control(action, body))
        except LookupError:
            self._json(404, {"message": "not found"})
        except (ValueError, TypeError) as exc:
            self._json(400, {"message": str(exc)})
