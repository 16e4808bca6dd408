"""The delivery table (docs/delivery.md) as code: a record is retried, re-enqueued or dead-lettered."""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cio_relay.errors import (
    CioRelayError,
    Classification,
    CustomerIOError,
    InvalidRequest,
    NotAttempted,
    SendInProgress,
)
from cio_relay.observability import count, logger
from cio_relay.queues import (
    MAX_BATCH_ENTRIES,
    MAX_VISIBILITY_SECONDS,
    WORKERS,
    Copy,
    Queues,
    VisibilityChange,
)
from cio_relay.queues import copy_attributes as _copy_attributes
from cio_relay.settings import Settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

# A Customer.io request is started only when this much time is left after its own timeouts and the
# time failure handling may need (settle_seconds).
SAFETY_MARGIN_SECONDS = 1.0
# Failure handling changes visibility (or copies records) 10 records per SQS call, WORKERS calls at a
# time. Each call is budgeted SQS_CALL_SECONDS (SQS answers in about 20 ms); no call starts with less
# than SETTLE_MARGIN_SECONDS left (those records come back at the queue's visibility timeout).
SQS_CALL_SECONDS = 0.05
SETTLE_FIXED_SECONDS = 0.25
SETTLE_MARGIN_SECONDS = 0.5
# A record that was not attempted on its last allowed receive (time ran short, or another invocation
# is sending it) is re-enqueued as a fresh copy carrying its lineage, at most this many times.
MAX_REQUEUES = 3
SOURCE_MESSAGE_ID = "SourceMessageId"  # the first message of a lineage (kept on every copy)
LINEAGE_RECEIVES = "LineageReceiveCount"  # receives of the earlier copies of a re-enqueued record
REQUEUES = "RequeueCount"
# A redriven dead-letter copy starts afresh: these describe the failed run, not the message.
REASON_ATTRIBUTES = ("FailureReason", "FailureStatus", "ReceiveCount", LINEAGE_RECEIVES, REQUEUES)

Outcomes = Mapping[str, BaseException | None]
_NOT_REPORTED: BaseException = NotAttempted("not reported")  # a marker: each record gets its own error
Deliver = Callable[[list[SQSRecord], "Deadline"], Outcomes]


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "dead_letter", "requeue"]
    delay: int
    reason: str
    status: str


@dataclass(frozen=True)
class Lineage:
    """Where a record comes from: the first message of its line, and its copies' receives so far."""

    source_message_id: str
    earlier_receives: int = 0
    requeues: int = 0

    @classmethod
    def of(cls, record: SQSRecord) -> Lineage:
        attributes = record.raw_event.get("messageAttributes") or {}

        def text(name: str) -> str | None:
            value = attributes.get(name) or {}
            found = value.get("stringValue") or value.get("StringValue")
            return str(found) if found else None

        def number(name: str) -> int:
            found = text(name)
            return int(found) if found and found.isdigit() else 0

        return cls(text(SOURCE_MESSAGE_ID) or record.message_id, number(LINEAGE_RECEIVES), number(REQUEUES))


def source_message_id(record: SQSRecord) -> str:
    """The id of the first message of the record's line: the record's own id unless it is a copy."""
    if not record.raw_event.get("messageAttributes"):  # no attributes: not a copy (read per record)
        return record.message_id
    return Lineage.of(record).source_message_id


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


def decide(
    exc: BaseException, receive_count: int, settings: Settings, *, lineage: Lineage | None = None
) -> Decision:
    """Map a failure to what happens to its record (docs/delivery.md, "Delivery policy").

    `receive_count` is this message's (SQS dead-letters it after maxReceiveCount); backoff and reasons
    count the receives of its whole line (a re-enqueued copy continues where the original stopped).
    """
    reason = str(exc) if isinstance(exc, CioRelayError) else f"unexpected {type(exc).__name__}"
    status = failure_status(exc)
    receives = receive_count + (lineage.earlier_receives if lineage else 0)
    requeues = lineage.requeues if lineage else 0
    if isinstance(exc, CioRelayError) and exc.classification is Classification.PERMANENT:
        return Decision("dead_letter", 0, reason, status)
    last = bool(settings.max_receive_count) and receive_count >= (settings.max_receive_count or 0)
    if last and isinstance(exc, NotAttempted | SendInProgress):
        # Healthy, just not sent this time: a fresh copy gets a fresh set of receives, a bounded number
        # of times, so nothing healthy is dead-lettered and nothing loops forever.
        if requeues < MAX_REQUEUES:
            return Decision("requeue", 0, reason, status)
        return Decision(
            "dead_letter", 0, f"{reason}: in {receives} receives and {requeues} re-enqueues", status
        )
    if last:
        # This is the last receive SQS allows: dead-letter the record ourselves so it keeps its reason
        # (a message SQS redrives after maxReceiveCount carries none).
        return Decision("dead_letter", 0, f"gave up after {receives} receives: {reason}", status)
    if isinstance(exc, NotAttempted):
        return Decision("retry", 0, reason, status)
    # Retryable, auth (already re-read and retried once by the client) and anything unexpected:
    # nothing is dropped, so back off until the last receive.
    retry_after = exc.retry_after if isinstance(exc, CustomerIOError) else None
    delay = backoff_delay(
        receives,
        base=settings.retry_base_seconds,
        cap=settings.retry_cap_seconds,
        retry_after=retry_after,
    )
    return Decision("retry", delay, reason, status)


def settle_seconds(records: int) -> float:
    """Time budgeted for failure handling of `records` records (all failing, the worst case)."""
    calls = math.ceil(records / MAX_BATCH_ENTRIES)
    return SETTLE_FIXED_SECONDS + math.ceil(calls / WORKERS) * SQS_CALL_SECONDS


class Deadline:
    """Whether there is still time to start a Customer.io request, or an SQS call, in this invocation."""

    def __init__(
        self,
        context: LambdaContext | None,
        request_seconds: float,
        *,
        records: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = context
        self._clock = clock
        self._started = clock()
        self.reserved_seconds = settle_seconds(records)
        self._needed_ms = (request_seconds + SAFETY_MARGIN_SECONDS + self.reserved_seconds) * 1000
        # The function's timeout, as far as the invocation can tell (what was left when it started).
        self.timeout_seconds = math.ceil(self._remaining_ms() / 1000) if context is not None else 900

    def _remaining_ms(self) -> float:
        return float(self._context.get_remaining_time_in_millis()) if self._context is not None else math.inf

    def allows_request(self) -> bool:
        return self._remaining_ms() > self._needed_ms

    def allows_settling(self) -> bool:
        return self._remaining_ms() > SETTLE_MARGIN_SECONDS * 1000

    def max_visibility(self) -> int:
        """The longest visibility SQS can take now: 12 h from the receive, which happened before this
        invocation started (by up to its timeout, as far as can be told)."""
        elapsed = math.ceil(self._clock() - self._started)
        return max(0, MAX_VISIBILITY_SECONDS - elapsed - self.timeout_seconds)


def shorter_visibility(change: VisibilityChange) -> int | None:
    """What to ask for when SQS refused a visibility (its 12 h count started earlier than we thought)."""
    return change.seconds // 2 if change.seconds >= 60 else None


@dataclass(frozen=True)
class _Failure:
    record: SQSRecord
    exc: BaseException
    decision: Decision
    lineage: Lineage


class Settlement:
    """Carries out the delivery table for every failed record of a batch, with batched SQS calls.

    `settle` returns each failed record's outcome: None when it is acknowledged (dead-lettered or
    re-enqueued), else the error it is reported with (it comes back from the queue after its delay).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        queues: Queues,
        queue_url: str | None,
        dlq_url: str | None,
        deadline: Deadline,
    ) -> None:
        self._settings = settings
        self._queues = queues
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self._deadline = deadline

    def _source_url(self, record: SQSRecord) -> str:
        # Prefer the configured URL (it works with AWS_ENDPOINT_URL and every partition); the one
        # derived from the ARN is the fallback.
        name = record.event_source_arn.rsplit(":", 1)[-1]
        if self._queue_url and self._queue_url.rstrip("/").endswith(f"/{name}"):
            return self._queue_url
        return record.queue_url

    def settle(self, failed: list[tuple[SQSRecord, BaseException]]) -> dict[str, BaseException | None]:
        failures = []
        for record, exc in failed:
            lineage = Lineage.of(record)
            receives = int(record.attributes.approximate_receive_count or 1)
            failures.append(
                _Failure(record, exc, decide(exc, receives, self._settings, lineage=lineage), lineage)
            )
        outcome: dict[str, BaseException | None] = {}
        retries: list[_Failure] = []
        dead = [f for f in failures if f.decision.action == "dead_letter"]
        requeue = [f for f in failures if f.decision.action == "requeue"]
        retries += [f for f in failures if f.decision.action == "retry"]
        retries += self._copy(dead, "dead_letter", outcome)
        retries += self._copy(requeue, "requeue", outcome)
        self._retry(retries, outcome)
        return outcome

    def _copy(
        self, failures: list[_Failure], action: str, outcome: dict[str, BaseException | None]
    ) -> list[_Failure]:
        """Dead-letter or re-enqueue copies; the failures whose copy SQS refused, now to be retried."""
        if not failures:
            return []
        target = self._dlq_url if action == "dead_letter" else None
        by_url: dict[str, list[_Failure]] = {}
        for failure in failures:
            url = target if action == "dead_letter" else self._source_url(failure.record)
            if url:
                by_url.setdefault(url, []).append(failure)
        refused: set[str] = set()
        for url, group in by_url.items():
            copies = [self._copy_of(f, action) for f in group]
            refused |= (
                self._queues.send_copies(url, copies)
                if self._deadline.allows_settling()
                else {c.key for c in copies}
            )
        if action == "dead_letter" and not self._dlq_url:
            logger.error("no dead-letter queue configured; leaving the records to SQS redrive")
            refused |= {f.record.message_id for f in failures}
        retry: list[_Failure] = []
        copied = sum(1 for f in failures if f.record.message_id not in refused)
        if copied:
            count("DeadLettered" if action == "dead_letter" else "Requeued", copied)
        if copied < len(failures):
            count("DeadLetterFailed" if action == "dead_letter" else "RequeueFailed", len(failures) - copied)
        for failure in failures:
            record = failure.record
            if record.message_id not in refused:
                self._log(
                    failure, "record dead-lettered" if action == "dead_letter" else "record re-enqueued"
                )
                outcome[record.message_id] = None
                continue
            # The copy failed: back off like any retryable failure (a delay of 0 would loop at once).
            receives = (
                int(record.attributes.approximate_receive_count or 1) + failure.lineage.earlier_receives
            )
            base, cap = self._settings.retry_base_seconds, self._settings.retry_cap_seconds
            delay = max(math.ceil(min(base, cap)), backoff_delay(receives, base=base, cap=cap))
            decision = Decision("retry", delay, failure.decision.reason, failure.decision.status)
            retry.append(_Failure(record, failure.exc, decision, failure.lineage))
        return retry

    def _copy_of(self, failure: _Failure, action: str) -> Copy:
        record, decision, lineage = failure.record, failure.decision, failure.lineage
        receives = str(int(record.attributes.approximate_receive_count or 1) + lineage.earlier_receives)
        own = {SOURCE_MESSAGE_ID: lineage.source_message_id}
        if action == "dead_letter":
            own |= {
                "FailureReason": decision.reason[:1000],
                "FailureStatus": decision.status,
                "ReceiveCount": receives,
            }
        else:
            own |= {LINEAGE_RECEIVES: receives, REQUEUES: str(lineage.requeues + 1)}
        # A copy starts its own count: the lineage and reason of earlier copies are not carried over
        # (a redriven dead-letter copy gets a fresh set of receives and re-enqueues).
        original = {
            k: v
            for k, v in (record.raw_event.get("messageAttributes") or {}).items()
            if k not in REASON_ATTRIBUTES
        }
        # A partly refused record dead-letters only its refused calls (dead_letter_body).
        body = getattr(failure.exc, "dead_letter_body", None) if action == "dead_letter" else None
        return Copy(record.message_id, body or record.body or "", _copy_attributes(own, original))

    def _retry(self, failures: list[_Failure], outcome: dict[str, BaseException | None]) -> None:
        ceiling = self._deadline.max_visibility()
        by_url: dict[str, list[VisibilityChange]] = {}
        for failure in failures:
            record = failure.record
            seconds = min(failure.decision.delay, ceiling)
            by_url.setdefault(self._source_url(record), []).append(
                VisibilityChange(record.message_id, record.receipt_handle, seconds)
            )
            outcome[record.message_id] = failure.exc
            self._log(failure, "record will be retried", delay_seconds=seconds)
        if failures:
            count("Retried", len(failures))
        for url, changes in by_url.items():
            self._queues.change_visibility_many(
                url, changes, smaller=shorter_visibility, in_time=self._deadline.allows_settling
            )

    @staticmethod
    def _log(failure: _Failure, message: str, **extra: Any) -> None:
        exc, decision, record = failure.exc, failure.decision, failure.record
        # Customer.io's error text can quote the payload back (emails, traits): the log line names the
        # error by its code; the full reason travels with the message to its dead-letter queue.
        shown = exc.code if isinstance(exc, CustomerIOError) else decision.reason
        log = {"message_id": record.message_id, "reason": shown, "status": decision.status, **extra}
        logger.set_correlation_id(record.message_id)
        if message == "record will be retried" and not isinstance(exc, CioRelayError):
            logger.error("record failed unexpectedly", extra=log, exc_info=exc)
        logger.warning(message, extra=log)


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


@collector_paused()  # the collector is paused for the whole of each call
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
    """Run `deliver` over the whole batch (so it can pack requests), then settle each record's outcome.

    `deliver` returns an outcome per messageId: None for delivered, or the exception it failed with.
    A record it did not report is treated as not attempted and comes back from the queue.
    """
    records = [SQSRecord(raw) for raw in event["Records"]]
    deadline = Deadline(context, settings.connect_timeout + settings.read_timeout, records=len(records))
    outcomes = deliver(records, deadline)
    if all(outcomes.get(record.message_id, _NOT_REPORTED) is None for record in records):
        return {"batchItemFailures": []}  # what the processor answers when every record succeeded
    failed: list[tuple[SQSRecord, BaseException]] = []
    for record in records:
        outcome = outcomes.get(record.message_id, _NOT_REPORTED)
        if outcome is _NOT_REPORTED:
            outcome = NotAttempted("not attempted in this invocation")
        if outcome is not None:
            failed.append((record, outcome))
    settlement = Settlement(
        settings=settings, queues=queues, queue_url=queue_url, dlq_url=dlq_url, deadline=deadline
    )
    try:
        reported = settlement.settle(failed) if failed else {}
    finally:
        logger.set_correlation_id(None)

    def record_handler(record: SQSRecord) -> None:
        error = reported.get(record.message_id)
        if error is not None:
            raise error

    # Powertools' batch utility (and asyncio, which it imports) only when a record failed.
    from aws_lambda_powertools.utilities.batch import (  # noqa: PLC0415
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
