"""Reliability fixtures: the local stack (moto server, real handlers, Lambda-like SQS pollers, the
Customer.io sandbox) with short retries, plus taps on what the functions did and logged."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import urllib3
from hypothesis import Phase, settings

from local_stack import LocalStack, Options
from local_stack.customerio import FakeCustomerIO
from local_stack.runtime import Invocation, Runtime
from tests.support import wait_for_progress

# `pytest --hypothesis-profile=fuzz-debug`: report the first failing example as found (no shrinking).
settings.register_profile("fuzz-debug", phases=[Phase.explicit, Phase.reuse, Phase.generate], print_blob=True)

# Short, but shaped like production: backoff min(cap, base * 2^(receives-1)) with jitter, and SQS
# visibility timeouts are whole seconds, so each retry waits 1-2 s here.
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 0.4
BACKLOG_REFRESH_SECONDS = 0.25


@dataclass(frozen=True)
class Run:
    """One invocation by an SQS poller: what it was given and how it ended."""

    function: str
    started: float
    ended: float
    busy: float  # time inside the handler (invocations run one at a time, like one container each)
    records: int
    max_receive: int  # highest ApproximateReceiveCount in the batch
    failed: int
    error: str | None


@dataclass
class Invocations:
    """Wraps the local stack's runtime to record every SQS-triggered invocation."""

    runs: list[Run] = field(default_factory=list)
    api_busy: float = 0.0  # seconds spent in API Gateway-triggered invocations
    api_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, runtime: Runtime) -> None:
        original = runtime.invoke

        def invoke(logical_id: str, event: dict[str, Any]) -> Invocation:
            started = time.monotonic()
            invocation = original(logical_id, event)
            records = event.get("Records")
            if isinstance(records, list) and records and records[0].get("eventSource") == "aws:sqs":
                result = invocation.result if isinstance(invocation.result, dict) else {}
                failed = len(records) if invocation.error else len(result.get("batchItemFailures") or [])
                error = type(invocation.error).__name__ if invocation.error else None
                receives = [
                    int((r.get("attributes") or {}).get("ApproximateReceiveCount", 1)) for r in records
                ]
                run = Run(
                    function=logical_id,
                    started=started,
                    ended=time.monotonic(),
                    busy=invocation.elapsed,
                    records=len(records),
                    max_receive=max(receives),
                    failed=failed,
                    error=error,
                )
                with self._lock:
                    self.runs.append(run)
            else:
                with self._lock:
                    self.api_busy += invocation.elapsed
                    self.api_calls += 1
            return invocation

        runtime.invoke = invoke  # type: ignore[method-assign]

    def snapshot(self) -> list[Run]:
        with self._lock:
            return list(self.runs)


class LayerLog(logging.Handler):
    """The layer's WARNING+ log records, with their extra keys (message_id, reason, status ...)."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[dict[str, Any]] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in self._STANDARD}
        with self._records_lock:
            self.records.append({"level": record.levelname, "message": record.getMessage(), **fields})

    def lines(self, message: str | None = None) -> list[dict[str, Any]]:
        with self._records_lock:
            return [r for r in self.records if message is None or r["message"] == message]


@dataclass
class Running:
    """A started local stack and handles on its parts."""

    stack: LocalStack
    fake: FakeCustomerIO
    sqs: Any
    http: urllib3.PoolManager
    invocations: Invocations
    log: LayerLog
    output: io.StringIO
    _backlog: dict[str, tuple[float, int]] = field(default_factory=dict)
    _backlog_lock: threading.Lock = field(default_factory=threading.Lock)

    def queue_url(self, logical_id: str) -> str:
        return self.stack.queues[logical_id].url

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = {"content-type": "application/json", **(headers or {})}
        if key:
            sent["x-api-key"] = self.stack.api_key
        return self.http.request(
            method,
            self.stack.api_url + path,
            body=None if body is None else json.dumps(body),
            headers=sent,
        )

    def send(self, logical_id: str, entries: list[tuple[str, dict[str, str]]]) -> list[str]:
        """SendMessageBatch (10 at a time) as a producer would; returns SQS message ids in order."""
        url = self.queue_url(logical_id)
        ids: list[str] = []
        for start in range(0, len(entries), 10):
            chunk = entries[start : start + 10]
            answer = self.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {
                        "Id": str(i),
                        "MessageBody": body,
                        "MessageAttributes": {
                            k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()
                        },
                    }
                    for i, (body, attrs) in enumerate(chunk)
                ],
            )
            assert not answer.get("Failed"), answer["Failed"]
            by_entry = {e["Id"]: e["MessageId"] for e in answer["Successful"]}
            ids.extend(by_entry[str(i)] for i in range(len(chunk)))
        return ids

    def depth(self, logical_id: str) -> tuple[int, int]:
        """(visible, in flight) messages on a queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url(logical_id),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def backlog(self, logical_id: str) -> int:
        """Messages on a queue, visible or in flight (cached for a moment: producers ask often)."""
        with self._backlog_lock:
            taken, value = self._backlog.get(logical_id, (0.0, 0))
            if time.monotonic() - taken > BACKLOG_REFRESH_SECONDS:
                value = sum(self.depth(logical_id))
                self._backlog[logical_id] = (time.monotonic(), value)
            return value

    def wait_for_room(self, logical_id: str, limit: int) -> None:
        """Flow control: moto's SQS scans every message of a queue on each call, so a deep backlog
        makes each call slower; producers wait while the queue holds `limit` messages or more, as
        long as the pollers keep draining it."""
        wait_for_progress(
            lambda: {f"{logical_id} backlog over {limit - 1}": max(0, self.backlog(logical_id) - limit + 1)},
            what=f"a producer waiting for room on {logical_id}",
            interval=BACKLOG_REFRESH_SECONDS,
        )

    def dead_letters(self, logical_id: str) -> list[dict[str, Any]]:
        """Every message on a dead-letter queue as {"body", "attributes"} (received, then left to expire)."""
        url = self.queue_url(logical_id)
        found: dict[str, dict[str, Any]] = {}
        while messages := self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=600
        ).get("Messages", []):
            for message in messages:
                attributes = {
                    k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()
                }
                found[message["MessageId"]] = {"body": message["Body"], "attributes": attributes}
        return list(found.values())


@contextmanager
def running_stack(
    *, parameters: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> Iterator[Running]:
    """The local stack on ephemeral ports with the sandbox, short retries and a short read timeout."""
    options = Options(
        port=0,
        sandbox_port=0,
        customerio="sandbox",
        retry_base=RETRY_BASE_SECONDS,
        retry_cap=RETRY_CAP_SECONDS,
        parameters=parameters or {},
        env={
            "CUSTOMERIO_READ_TIMEOUT": f"{READ_TIMEOUT_SECONDS:g}",
            "CUSTOMERIO_CONNECT_TIMEOUT": "1",
            **(env or {}),
        },
    )
    output = io.StringIO()
    # Many threads share this interpreter (moto, the sandbox, the API, pollers, producers); a short
    # GIL switch interval keeps the I/O-bound handlers from queueing behind them.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        with LocalStack(options, out=output) as stack:
            yield from _attached(stack, output)
    finally:
        sys.setswitchinterval(switch_interval)


def _attached(stack: LocalStack, output: io.StringIO) -> Iterator[Running]:
    """Handles on a started stack, with the taps on its invocations and the layer's log."""
    assert stack.runtime is not None
    assert stack.sandbox is not None
    invocations = Invocations()
    invocations.attach(stack.runtime)
    from cio_relay.observability import logger  # noqa: PLC0415 - the stack set the functions' env first

    tap = LayerLog()
    layer_logger = logging.getLogger(logger.name)
    layer_logger.addHandler(tap)
    sqs = boto3.client(
        "sqs",
        endpoint_url=stack.moto_url,
        region_name=stack.options.region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=5, read=60))
    try:
        yield Running(stack, stack.sandbox, sqs, http, invocations, tap, output)
    finally:
        layer_logger.removeHandler(tap)


@pytest.fixture
def start_stack() -> Callable[..., AbstractContextManager[Running]]:
    """`with start_stack(parameters=..., env=...) as running:` the local stack for one test."""
    return running_stack
