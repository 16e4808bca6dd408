"""The fake Customer.io (local_stack/customerio.py) in its own process, plus request/event counts.

The fake runs in a separate process so that its work (parsing, validating, sleeping out the latency)
is never counted in the CPU time or the GIL of the client being measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.child import ChildServer
from local_stack.customerio import BATCH_PATH, MAX_BATCH_BYTES, FakeCustomerIO, RecordedRequest, _Outcome

ROOT = Path(__file__).resolve().parent.parent
PIPELINES_KEY = "pk-bench-pipelines"
APP_KEY = "app-bench-key"
SITE_ID = "bench-site"
TRACK_KEY = "bench-track-key"
CONTROL_PREFIX = "/__bench__/"
DEFAULT_LATENCY = 0.025


def events_in(record: RecordedRequest) -> int:
    """Customer.io calls carried by one accepted request: the batch length for /v1/batch, else 1."""
    if not (record.status is not None and 200 <= record.status < 300) or record.dropped:
        return 0
    if record.path == BATCH_PATH and isinstance(record.json, dict):
        batch = record.json.get("batch")
        return len(batch) if isinstance(batch, list) else 0
    return 1


def agent(record: RecordedRequest) -> str:
    """Who sent it: the User-Agent up to its version (`cio-relay`, `analytics-python`, ...)."""
    return record.headers.get("user-agent", "unknown").split("/", 1)[0].strip() or "unknown"


def tally(records: list[RecordedRequest]) -> dict[str, dict[str, int]]:
    """Per sender: requests, events delivered and failed answers, ignoring the bench's own control calls.

    Counting per User-Agent lets the bench interleave contenders' runs against one fake.
    """
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        if record.path.startswith(CONTROL_PREFIX):
            continue
        mine = counts.setdefault(agent(record), {"requests": 0, "events": 0, "errors": 0})
        mine["requests"] += 1
        mine["events"] += events_in(record)
        failed = record.status is None or not 200 <= record.status < 300 or record.dropped
        mine["errors"] += int(failed)
    return counts


class BenchFake(FakeCustomerIO):
    """FakeCustomerIO plus control calls (on any of its listeners).

    Every answer leaves `latency` seconds after the request was read, whatever the fake spent checking
    it: FakeCustomerIO's own latency comes on top of its processing, which for a 1000-call /v1/batch is
    several milliseconds of Python and would penalise exactly the contenders that batch.
    GET /__bench__/stats answers `tally()` of what arrived since the last POST /__bench__/reset.
    """

    def __init__(self, latency: float = DEFAULT_LATENCY) -> None:
        super().__init__(
            pipelines_api_key=PIPELINES_KEY,
            app_api_key=APP_KEY,
            site_id=SITE_ID,
            track_api_key=TRACK_KEY,
            latency=0.0,
        )
        self.response_latency = latency

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
        if path == f"{CONTROL_PREFIX}stats":
            return _Outcome(200, tally(self.requests)), None
        if path == f"{CONTROL_PREFIX}reset":
            self.reset()
            return _Outcome(200, {}), None
        started = time.perf_counter()
        if api == "pipelines" and method == "POST" and path == BATCH_PATH:
            answer = self._counted_batch(headers, body)
        else:
            answer = super()._process(api, method, path, query, headers, body, strict)
        time.sleep(max(0.0, self.response_latency - (time.perf_counter() - started)))
        return answer

    def _counted_batch(self, headers: dict[str, str], body: bytes) -> tuple[_Outcome, Any]:
        """/v1/batch, checked for its key, its JSON and its size, and counted; its calls are not
        validated one by one here (the tests do that): for a 500 KB request that is tens of ms of
        this process's Python, on one GIL, which a contender sending several requests at once would
        see as Customer.io's latency. Customer.io does that work elsewhere, in parallel."""
        if not self._pipelines_authorized(headers):
            return _Outcome(401, {"meta": {"errors": ["Unauthorized request"]}}), None
        payload = _json_or_none(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            return _Outcome(400, {"meta": {"errors": ["body must be a batch"]}}), payload
        if len(body) > MAX_BATCH_BYTES:
            return _Outcome(200, {}, dropped=True, error="over 500 KB (dropped)"), payload
        return _Outcome(200, {}), payload


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None


class FakeProcess(ChildServer):
    """`python -m bench.fake` as a child process; stats()/reset() over its control calls."""

    def __init__(self, latency: float = DEFAULT_LATENCY) -> None:
        super().__init__("bench.fake", ["--latency", str(latency)])
        self.latency = latency

    @property
    def pipelines_url(self) -> str:
        return self.url

    @property
    def app_url(self) -> str:
        return self.info["app_url"]

    @property
    def track_url(self) -> str:
        return self.info["track_url"]

    def _control(self, name: str, method: str) -> dict[str, dict[str, int]]:
        request = urllib.request.Request(f"{self.url}{CONTROL_PREFIX}{name}", method=method, data=None)
        # Only ever http://127.0.0.1 (the fake this bench started).
        with urllib.request.urlopen(request, timeout=10) as answer:  # nosec B310
            data: dict[str, dict[str, int]] = json.loads(answer.read())
        return data

    def stats(self, sender: str) -> dict[str, int]:
        """Requests, events and errors from one User-Agent (see `agent`) since the last reset."""
        return self._control("stats", "GET").get(sender, {"requests": 0, "events": 0, "errors": 0})

    def reset(self) -> None:
        self._control("reset", "POST")


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the bench fake Customer.io until stdin closes")
    parser.add_argument("--latency", type=float, default=DEFAULT_LATENCY)
    args = parser.parse_args()
    with BenchFake(latency=args.latency) as fake:
        urls = {"url": fake.pipelines_url, "app_url": fake.app_url, "track_url": fake.track_url}
        print(json.dumps(urls), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
