"""The fake Customer.io of tests/fakes, run in its own process, plus the Track API and request/event counts.

The fake runs in a separate process so that its work (parsing, validating, sleeping out the latency)
is never counted in the CPU time or the GIL of the client being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.fakes.customerio import BATCH_PATH, FakeCustomerIO, RecordedRequest, _Outcome

ROOT = Path(__file__).resolve().parent.parent
PIPELINES_KEY = "pk-bench-pipelines"
APP_KEY = "app-bench-key"
SITE_ID = "bench-site"
TRACK_KEY = "bench-track-key"
TRACK_API_PREFIX = "/api/v1/"
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


def tally(records: list[RecordedRequest]) -> dict[str, int]:
    """Requests, events delivered and failed answers, ignoring the bench's own control calls."""
    counted = [r for r in records if not r.path.startswith(CONTROL_PREFIX)]
    return {
        "requests": len(counted),
        "events": sum(events_in(r) for r in counted),
        "errors": sum(1 for r in counted if r.status is None or not 200 <= r.status < 300 or r.dropped),
    }


class BenchFake(FakeCustomerIO):
    """FakeCustomerIO plus the Track API (`customerio` package: /api/v1/customers/...) and control calls.

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
        if path.startswith(TRACK_API_PREFIX):
            # Track API (PUT customers/{id}, POST customers/{id}/events): Basic site_id:track_api_key.
            if self._pipelines_authorized(headers):
                answer: tuple[_Outcome, Any] = (_Outcome(200, {}), _json_or_none(body))
            else:
                answer = (_Outcome(401, {"meta": {"error": "Unauthorized"}}), None)
        else:
            answer = super()._process(method, path, query, headers, body, strict)
        time.sleep(max(0.0, self.response_latency - (time.perf_counter() - started)))
        return answer


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class FakeProcess:
    """`python -m bench.fake` as a child process; stats()/reset() over its control calls."""

    def __init__(self, latency: float = DEFAULT_LATENCY) -> None:
        self.latency = latency
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> FakeProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "cio_relay"), str(ROOT)])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake", "--latency", str(self.latency)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake Customer.io did not start")
        self.url = json.loads(line)["url"]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # the child exits when its stdin closes
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _control(self, name: str, method: str) -> dict[str, int]:
        request = urllib.request.Request(f"{self.url}{CONTROL_PREFIX}{name}", method=method, data=None)
        with urllib.request.urlopen(request, timeout=10) as answer:
            data: dict[str, int] = json.loads(answer.read())
        return data

    def stats(self) -> dict[str, int]:
        return self._control("stats", "GET")

    def reset(self) -> None:
        self._control("reset", "POST")


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the bench fake Customer.io until stdin closes")
    parser.add_argument("--latency", type=float, default=DEFAULT_LATENCY)
    args = parser.parse_args()
    with BenchFake(latency=args.latency) as fake:
        print(json.dumps({"url": fake.url}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
