"""Integration helpers: invoke a function as Lambda does, play the SQS event source, read logs and metrics."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Stack, reset_caches
from tests.support import LambdaContext, load_function, sqs_records_from

Handler = Callable[[dict[str, Any], Any], Any]


def events_handler() -> Handler:
    handler: Handler = load_function("events").lambda_handler
    return handler


@dataclass(frozen=True)
class Answer:
    """What API Gateway would send back to the caller."""

    status: int
    body: Any
    headers: dict[str, str]


def call_api(event: dict[str, Any], context: LambdaContext, handler: Handler | None = None) -> Answer:
    result = (handler or events_handler())(event, context)
    assert "statusCode" in result, f"not an API Gateway answer: {result}"
    raw = result.get("body") or ""
    if result.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    headers = dict(result.get("headers") or {})
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = values[-1]
    return Answer(result["statusCode"], json.loads(raw) if raw else None, headers)


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Set template parameters (environment variables) for one test and forget cached settings."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_caches()


def receive_all(stack: Stack, queue_url: str, *, visibility: int = 30) -> list[dict[str, Any]]:
    """Every message now visible on a queue (received, so they are in flight for `visibility` s)."""
    messages: list[dict[str, Any]] = []
    while batch := stack.receive(queue_url, visibility=visibility):
        messages.extend(batch)
    return messages


def bodies(messages: list[dict[str, Any]]) -> list[Any]:
    return [json.loads(m["Body"]) for m in messages]


def send_bodies(stack: Stack, queue_url: str, payloads: list[Any]) -> list[str]:
    """A producer writing straight onto the queue; returns the SQS message ids in order."""
    ids: list[str] = []
    for start in range(0, len(payloads), 10):
        chunk = payloads[start : start + 10]
        entries = [
            {"Id": str(i), "MessageBody": p if isinstance(p, str) else json.dumps(p)}
            for i, p in enumerate(chunk)
        ]
        answer = stack.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not answer.get("Failed"), answer
        by_id = {e["Id"]: e["MessageId"] for e in answer["Successful"]}
        ids.extend(by_id[str(i)] for i in range(len(chunk)))
    return ids


@dataclass
class Poll:
    """One poll of the event source mapping: the records it handed over and what the function said."""

    records: list[dict[str, Any]]
    response: dict[str, Any] | None
    error: BaseException | None

    @property
    def failed_ids(self) -> list[str]:
        if self.error is not None:
            return [r["messageId"] for r in self.records]
        assert self.response is not None
        return [f["itemIdentifier"] for f in self.response["batchItemFailures"]]


def poll(
    stack: Stack,
    context: LambdaContext,
    *,
    queue_url: str | None = None,
    queue_arn: str | None = None,
    max_records: int = 10,
    handler: Handler | None = None,
) -> Poll:
    """Do what Lambda's SQS event source mapping does: receive, invoke, delete what succeeded.

    With ReportBatchItemFailures, records missing from batchItemFailures are deleted; an invocation
    that raises deletes nothing (every record comes back when its visibility timeout ends).
    """
    url = queue_url or stack.events_queue_url
    messages: list[dict[str, Any]] = []
    while len(messages) < max_records:
        batch = stack.receive(url, max_messages=min(10, max_records - len(messages)), visibility=180)
        if not batch:
            break
        messages.extend(batch)
    event = sqs_records_from(messages, queue_arn or stack.events_queue_arn)
    response: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        response = (handler or events_handler())(event, context)
    except Exception as exc:
        error = exc
    result = Poll(event["Records"], response, error)
    failed = set(result.failed_ids)
    done = [r["receiptHandle"] for r in event["Records"] if r["messageId"] not in failed]
    for start in range(0, len(done), 10):
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(done[start : start + 10])]
        stack.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    return result


@dataclass
class VisibilityCalls:
    """Records every visibility change the functions make, one per record (the calls still go to moto)."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        # One entry per record, whether it came alone or in a ChangeMessageVisibilityBatch.
        for entry in params.get("Entries") or [params]:
            self.calls.append({"QueueUrl": params["QueueUrl"], **entry})

    @property
    def timeouts(self) -> list[int]:
        return [int(c["VisibilityTimeout"]) for c in self.calls]


@contextmanager
def visibility_calls() -> Iterator[VisibilityCalls]:
    from cio_relay.queues import sqs_client  # noqa: PLC0415 - the layer's client, made inside moto

    spy = VisibilityCalls()
    events = sqs_client().meta.events
    names = [
        f"provide-client-params.sqs.{op}"
        for op in ("ChangeMessageVisibility", "ChangeMessageVisibilityBatch")
    ]
    for name in names:
        events.register(name, spy)
    try:
        yield spy
    finally:
        for name in names:
            events.unregister(name, spy)


class LogCapture(logging.Handler):
    """The layer's Powertools log lines, as the JSON dicts CloudWatch would store."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def messages(self, level: str | None = None) -> list[str]:
        return [line["message"] for line in self.lines if level is None or line["level"] == level]

    def text(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines)


@contextmanager
def captured_logs() -> Iterator[LogCapture]:
    from cio_relay.observability import logger  # noqa: PLC0415

    capture = LogCapture()
    capture.setFormatter(logger.registered_formatter)
    target = logging.getLogger(logger.service)  # the standard logger behind the Powertools one
    target.addHandler(capture)
    try:
        yield capture
    finally:
        target.removeHandler(capture)


def metrics_from(stdout: str) -> dict[str, float]:
    """Sum of every metric value flushed (EMF lines on stdout), by metric name."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                values = value if isinstance(value, list) else [value]
                totals[metric["Name"]] = totals.get(metric["Name"], 0.0) + sum(values)
    return totals
