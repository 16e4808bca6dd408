"""The sandbox of `make run`: its control endpoints, its page, and how it treats a bad client."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from local_stack import sandbox as sandbox_module
from local_stack.customerio import CHAOS_KINDS
from local_stack.sandbox import (
    SandboxCustomerIO,
    SandboxPage,
    call_view,
    dead_letter_note,
    person_view,
    render_page,
)

PIPELINES_KEY = "sandbox-pipelines"
SITE_ID = "sandbox-site"
TRACK_KEY = "sandbox-track"


@pytest.fixture
def cio() -> Iterator[SandboxCustomerIO]:
    fake = SandboxCustomerIO(pipelines_api_key=PIPELINES_KEY, site_id=SITE_ID, track_api_key=TRACK_KEY)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def state_of(cio: SandboxCustomerIO) -> dict[str, Any]:
    return {
        "api_url": "http://127.0.0.1:1",
        "customerio": {
            "mode": "sandbox",
            "chaos": cio.chaos_settings(),
            "faults_injected": cio.faults_injected,
        },
        "queues": [],
        "dead_letters": [],
        "people": [person_view(p) for p in cio.workspace.people()],
        "calls": [call_view(r) for r in cio.requests],
    }


@pytest.fixture
def page(cio: SandboxCustomerIO) -> Iterator[SandboxPage]:
    served = SandboxPage(state=lambda: state_of(cio), sandbox=cio, port=0)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def post(page: SandboxPage, action: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    answer = urllib3.request("POST", f"{page.url}/_sandbox/{action}", body=data, retries=False, timeout=5)
    return answer.status, json.loads(answer.data)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_reset_clears_calls_faults_chaos_outage_and_the_people_identified_since(
    page: SandboxPage, cio: SandboxCustomerIO
) -> None:
    # GIVEN chaos on one path, a queued fault, an outage, and a person identified through Pipelines
    assert post(page, "chaos", {"paths": {"/v1/batch": 1.0}, "seed": 3, "kinds": ["503"]})[0] == 200
    assert post(page, "fail", {"path": "/v1/identify", "status": 500, "count": 2})[0] == 200
    headers = {"Authorization": basic(PIPELINES_KEY), "X-Strict-Mode": "1"}
    identify = json.dumps({"userId": "new-person"}).encode()
    urllib3.request("POST", f"{cio.pipelines_url}/v1/identify", body=identify, headers=headers)
    urllib3.request("POST", f"{cio.pipelines_url}/v1/identify", body=identify, headers=headers)
    urllib3.request("POST", f"{cio.pipelines_url}/v1/identify", body=identify, headers=headers)
    assert cio.workspace.find("id", "new-person") is not None
    assert post(page, "outage", {"on": True})[0] == 200

    # WHEN the sandbox is reset
    status, body = post(page, "reset")

    # THEN chaos is off, nothing is queued or recorded, the outage is over and the person is gone
    assert status == 200
    assert body == {"chaos": {"rates": {}, "kinds": list(CHAOS_KINDS), "seed": None}}
    assert cio.requests == []
    assert cio.pending_faults() == 0
    assert cio.workspace.find("id", "new-person") is None
    answer = urllib3.request(
        "POST",
        f"{cio.pipelines_url}/v1/batch",
        body=b'{"batch":[{"type":"identify","userId":"u"}]}',
        headers=headers,
    )
    assert answer.status == 200


@pytest.mark.parametrize(
    ("action", "body", "field", "message"),
    [
        ("chaos", {"rate": "lots"}, "rate", "rate must be a number"),
        ("chaos", {"rate": 2}, "rate", "rate must be between 0 and 1"),
        ("chaos", {"paths": ["/v1/batch"]}, "paths", "paths must be an object of path to rate"),
        ("chaos", {"paths": {"/v1/batch": "half"}}, "/v1/batch", "/v1/batch must be a number"),
        ("chaos", {"seed": "x"}, "seed", "seed must be an integer"),
        ("chaos", {"kinds": ["teapot"]}, "kinds", "unknown fault kind 'teapot'"),
        ("chaos", {"kinds": "503"}, "kinds", "kinds must be a non-empty list"),
        ("chaos", {"rates": 0.1}, "rates", "unknown field for chaos: rates"),
        ("fail", {"status": "500"}, "status", "status must be an integer"),
        ("fail", {"status": 999}, None, "Fault.status 999 is not an HTTP status"),
        ("fail", {"count": 0}, "count", "count must be between 1 and 1000"),
        ("fail", {"count": 1.5}, "count", "count must be an integer"),
        ("fail", {"path": "v1/batch"}, "path", "path must be a path such as /v1/batch, or *"),
        ("fail", {"delay": -1}, "delay", "delay must be between 0 and 60"),
        ("fail", {"drop": "yes"}, "drop", "drop must be true or false"),
        ("fail", {"retry_after": ["1"], "status": 429}, "retry_after", "retry_after must be seconds"),
        ("outage", {"on": "false"}, "on", "on must be true or false"),
    ],
)
def test_control_refuses_a_bad_field_with_a_json_400_naming_it(
    page: SandboxPage,
    cio: SandboxCustomerIO,
    action: str,
    body: dict[str, Any],
    field: str | None,
    message: str,
) -> None:
    # GIVEN a control request with one bad field
    # WHEN it is posted
    status, answer = post(page, action, body)

    # THEN 400 with a code, the message and the field; the sandbox did not change
    assert status == 400
    assert answer["code"] == "bad_request"
    assert answer["message"].startswith(message)
    assert answer.get("field") == field
    assert cio.pending_faults() == 0
    assert cio.chaos_settings()["rates"] == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{not json", "the body must be JSON"), (b"[1]", "the body must be a JSON object")],
)
def test_control_refuses_a_body_that_is_not_a_json_object(
    page: SandboxPage, raw: bytes, message: str
) -> None:
    status, answer = post(page, "chaos", raw=raw)
    assert (status, answer) == (400, {"code": "bad_request", "message": message})


def test_unknown_controls_pages_and_methods_answer_json(page: SandboxPage) -> None:
    # GIVEN the sandbox page
    # WHEN an unknown control, an unknown page and an unsupported method are requested
    unknown = urllib3.request("POST", f"{page.url}/_sandbox/explode", body=b"{}")
    missing = urllib3.request("GET", f"{page.url}/nothing-here")
    put = urllib3.request("PUT", f"{page.url}/_sandbox/reset", body=b"{}")
    bad_length = raw_exchange(
        page, b"POST /_sandbox/reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ten\r\n\r\n"
    )

    # THEN each answer is JSON with a code and a message
    assert (unknown.status, json.loads(unknown.data)["code"]) == (404, "not_found")
    assert "POST /_sandbox/{chaos, fail, outage, reset}" in json.loads(unknown.data)["message"]
    assert (missing.status, json.loads(missing.data)["code"]) == (404, "not_found")
    assert (put.status, json.loads(put.data)["code"]) == (405, "method_not_allowed")
    head, _, payload = bad_length.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(payload) == {"code": "bad_request", "message": "Content-Length must be a number"}


def raw_exchange(page: SandboxPage, data: bytes) -> bytes:
    host, port = page.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_client_that_stalls_mid_body_costs_a_thread_not_a_traceback(
    page: SandboxPage, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a short read timeout, and a client that promises 100 bytes, sends 10 and stalls
    monkeypatch.setattr(sandbox_module._Handler, "timeout", 0.3)
    host, port = page.url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=5)
    stalled.sendall(b'POST /_sandbox/chaos HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"rate": 0')

    # WHEN others use the page meanwhile
    answer = urllib3.request("GET", f"{page.url}/_sandbox/state", timeout=5)

    # THEN they are served, the stalled connection is closed once its read times out, and nothing
    # was printed (no traceback)
    assert answer.status == 200
    deadline = time.monotonic() + 5
    closed = b"pending"
    while closed and time.monotonic() < deadline:
        closed = stalled.recv(1024)
    stalled.close()
    assert closed == b"", "the sandbox did not close a connection that stalled mid-body"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_dead_letter_notes_tell_retries_exhausted_from_permanent_failures() -> None:
    assert dead_letter_note("gave up after 5 receives: POST /v1/batch: Customer.io answered 503") == (
        "retries exhausted: dead-lettered by the function on its last receive"
    )
    assert dead_letter_note("POST /v1/send/email: Customer.io answered 400: to is required") == (
        "dead-lettered by the function (permanent failure)"
    )
    assert dead_letter_note(None, moved_by_sqs_after=5) == (
        "moved by SQS after maxReceiveCount (5) receives; last failure below"
    )


def test_page_shows_the_backend_of_each_call_and_the_people_in_the_workspace(cio: SandboxCustomerIO) -> None:
    # GIVEN one call to Pipelines, one to Track, one over-size call that Customer.io discards
    pipelines = {"Authorization": basic(PIPELINES_KEY), "X-Strict-Mode": "1"}
    track = {"Authorization": basic(SITE_ID, TRACK_KEY)}
    urllib3.request("POST", f"{cio.pipelines_url}/v1/identify", body=b'{"userId":"pip-1"}', headers=pipelines)
    urllib3.request("PUT", f"{cio.track_url}/api/v1/customers/trk-1", body=b'{"plan":"team"}', headers=track)
    big = json.dumps({"userId": "big", "traits": {f"t{i}": "x" * 900 for i in range(40)}}).encode()
    urllib3.request("POST", f"{cio.pipelines_url}/v1/identify", body=big, headers=pipelines)

    # WHEN the page renders
    state = state_of(cio)
    html = render_page(state)

    # THEN each call names the backend that received it, and the people include both new ones
    assert [c["backend"] for c in state["calls"]] == ["Pipelines", "Track", "Pipelines"]
    assert "<td>Pipelines</td>" in html
    assert "<td>Track</td>" in html
    assert "discarded by Customer.io" in html
    assert "<td>pip-1</td>" in html
    assert "<td>trk-1</td>" in html
    assert "<td>big</td>" not in html
    assert {
        k: person_view(p)[k] for p in cio.workspace.people() if p["id"] == "trk-1" for k in ("id", "email")
    } == {"id": "trk-1", "email": None}
