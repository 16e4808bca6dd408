"""The delivery table (docs/delivery.md) as code: a failed record is retried with backoff or dead-lettered."""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cio_relay.errors import (
    CioRelayError,
    Classification,
    CustomerIOError,
    InvalidRequest,
    NotAttempted,
)
from cio_relay.observability import count, logger
from cio_relay.queues import MAX_VISIBILITY_SECONDS, Queues
from cio_relay.settings import Settings

# A Customer.io request is started only when this much time is left after its own timeouts.
SAFETY_MARGIN_SECONDS = 1.0

Outcomes = Mapping[str, BaseException | None]
_NOT_REPORTED: BaseException = NotAttempted("not reported")  # a marker: each record gets its own error
Deliver = Callable[[list[SQSRecord], "Deadline"], Outcomes]


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "dead_letter"]
    delay: int
    reason: str
    status: str


def backoff_delay(
    receive_count: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: Callable[[float, float], float] = random.uniform,
) -> int:
    """min(cap, base * 2**(receives-1)) with full jitter, or Retry-After when longer; at most 12 h."""
    ceiling = min(cap, base * 2 ** max(0, receive_count - 1))
    delay = math.ceil(rng(0, ceiling)) if ceiling > 0 else 0
    if retry_after is not None:
        delay = max(delay, math.ceil(retry_after))
    return min(MAX_VISIBILITY_SECONDS, delay)


def failure_status(exc: BaseException) -> str:
    if isinstance(exc, CustomerIOError) and exc.status is not None:
        return str(exc.status)
    if isinstance(exc, InvalidRequest):
        return str(exc.status)
    return getattr(exc, "code", type(exc).__name__)


def decide(exc: BaseException, receive_count: int, settings: Settings) -> Decision:
    """Map a failure to what happens to its record (docs/delivery.md, "Delivery policy")."""
    reason = str(exc) if isinstance(exc, CioRelayError) else f"unexpected {type(exc).__name__}"
    status = failure_status(exc)
    if isinstance(exc, CioRelayError) and exc.classification is Classification.PERMANENT:
        return Decision("dead_letter", 0, reason, status)
    if settings.max_receive_count and receive_count >= settings.max_receive_count:
        # This is the last receive SQS allows: dead-letter the record ourselves so it keeps its reason
        # (a message SQS redrives after maxReceiveCount carries none).
        return Decision("dead_letter", 0, f"gave up after {receive_count} receives: {reason}", status)
    if isinstance(exc, NotAttempted):
        return Decision("retry", 0, reason, status)
    # Retryable, auth (already re-read and retried once by the client) and anything unexpected:
    # nothing is dropped, so back off until the last receive.
    retry_after = exc.retry_after if isinstance(exc, CustomerIOError) else None
    delay = backoff_delay(
        receive_count,
        base=settings.retry_base_seconds,
        cap=settings.retry_cap_seconds,
        retry_after=retry_after,
    )
    return Decision("retry", delay, reason, status)


class Deadline:
    """Whether there is still time to start a Customer.io request in this invocation."""

    def __init__(self, context: LambdaContext | None, request_seconds: float) -> None:
        self._context = context
        self._needed_ms = (request_seconds + SAFETY_MARGIN_SECONDS) * 1000

    def allows_request(self) -> bool:
        if self._context is None:
            return True
        return bool(self._context.get_remaining_time_in_millis() > self._needed_ms)


class DeliveryProcessor(BatchProcessor):
    """A BatchProcessor whose failure_handler applies the delivery table to each failed record."""

    def __init__(
        self, *, settings: Settings, queues: Queues, queue_url: str | None, dlq_url: str | None
    ) -> None:
        super().__init__(event_type=EventType.SQS)
        self._settings = settings
        self._queues = queues
        self._queue_url = queue_url
        self._dlq_url = dlq_url

    def _source_url(self, record: SQSRecord) -> str:
        # Prefer the configured URL (it works with AWS_ENDPOINT_URL and every partition); the one
        # derived from the ARN is the fallback.
        name = record.event_source_arn.rsplit(":", 1)[-1]
        if self._queue_url and self._queue_url.rstrip("/").endswith(f"/{name}"):
            return self._queue_url
        return record.queue_url

    def failure_handler(self, record: SQSRecord, exception: Any) -> Any:
        exc: BaseException = exception[1]
        decision = decide(exc, int(record.attributes.approximate_receive_count or 1), self._settings)
        # Customer.io's error text can quote the payload back (emails, traits): the log line names the
        # error by its code; the full reason travels with the message to its dead-letter queue.
        shown = exc.code if isinstance(exc, CustomerIOError) else decision.reason
        log = {"message_id": record.message_id, "reason": shown, "status": decision.status}
        if decision.action == "dead_letter":
            if self._dead_letter(record, decision, getattr(exc, "dead_letter_body", None)):
                logger.warning("record dead-lettered", extra=log)
                count("DeadLettered")
                return self.success_handler(record=record.raw_event, result=None)
            decision = Decision("retry", 0, decision.reason, decision.status)
        if not isinstance(exc, CioRelayError):
            logger.exception("record failed unexpectedly", extra=log, exc_info=exc)
        else:
            logger.warning("record will be retried", extra={**log, "delay_seconds": decision.delay})
        count("Retried")
        self._queues.change_visibility(self._source_url(record), record.receipt_handle, decision.delay)
        return super().failure_handler(record, exception)

    def _dead_letter(self, record: SQSRecord, decision: Decision, body: str | None = None) -> bool:
        """Copy the record (or `body`: only the calls that were refused) to the DLQ with the reason."""
        if not self._dlq_url:
            logger.error("no dead-letter queue configured; leaving the record to SQS redrive")
            return False
        reason = {
            "FailureReason": decision.reason[:1000],
            "FailureStatus": decision.status,
            "SourceMessageId": record.message_id,
            "ReceiveCount": record.attributes.approximate_receive_count or "1",
        }
        original = record.raw_event.get("messageAttributes") or {}
        return self._queues.dead_letter(self._dlq_url, body or record.body or "", reason, original)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is parsed and sent.

    A batch allocates objects that live until it is done (records, calls, encoded bytes), and CPython
    answers that with full collections that walk the whole heap, the event included, again and
    again: a third of the CPU of a 10,000-record batch. Reference counting still frees everything
    but cycles, which the collector picks up once it runs again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def process_batch(
    event: dict[str, Any],
    context: LambdaContext,
    *,
    deliver: Deliver,
    settings: Settings,
    queues: Queues,
    queue_url: str | None,
    dlq_url: str | None,
) -> PartialItemFailureResponse:
    """Run `deliver` over the whole batch (so it can pack requests), then report each record's outcome.

    `deliver` returns an outcome per messageId: None for delivered, or the exception it failed with.
    A record it did not report is treated as not attempted and comes back from the queue.
    """
    with collector_paused():
        records = [SQSRecord(raw) for raw in event["Records"]]
        deadline = Deadline(context, settings.connect_timeout + settings.read_timeout)
        outcomes = deliver(records, deadline)
    if all(outcomes.get(record.message_id, _NOT_REPORTED) is None for record in records):
        return {"batchItemFailures": []}  # what the processor answers when every record succeeded

    def record_handler(record: SQSRecord) -> None:
        outcome = outcomes.get(record.message_id, _NOT_REPORTED)
        if outcome is None:
            return
        # The failed record's log lines (failure_handler runs right after this) carry its messageId.
        logger.set_correlation_id(record.message_id)
        if outcome is _NOT_REPORTED:
            raise NotAttempted("not attempted in this invocation")
        raise outcome

    processor = DeliveryProcessor(settings=settings, queues=queues, queue_url=queue_url, dlq_url=dlq_url)
    try:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        logger.set_correlation_id(None)
