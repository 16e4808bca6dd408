"""An SQS poller that behaves like Lambda's event source mapping for a standard queue.

It gathers up to BatchSize messages for at most MaximumBatchingWindowInSeconds, calls the handler with
real SQS event records, deletes the records the handler did not report in `batchItemFailures`, and
leaves the whole batch when the handler raised (or answered something malformed). Nothing else
touches the messages: the function's own ChangeMessageVisibility calls decide when they come back,
and moto's redrive policy moves a message to its dead-letter queue after maxReceiveCount receives.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from local_stack.runtime import Invocation, summarize

MAX_RECEIVE = 10  # ReceiveMessage returns at most 10 messages per call
LONG_POLL_SECONDS = 1  # short enough to stop promptly on Ctrl-C


@dataclass(frozen=True)
class Outcome:
    """What the poller did with one batch."""

    records: int
    deleted: int
    failed: int
    error: str | None


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A ReceiveMessage result as the record Lambda hands the function."""
    attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        item: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType", "String"),
        }
        if "StringValue" in value:
            item["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            item["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        attributes[name] = item
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_ids(invocation: Invocation, batch_ids: set[str]) -> tuple[set[str], str | None]:
    """The ids to leave on the queue, and why the whole batch is left when it is."""
    if invocation.error is not None:
        first_line = (str(invocation.error).strip().splitlines() or [""])[0]
        if type(invocation.error).__name__ == "BatchProcessingError":  # Powertools: every record failed
            first_line = "every record failed (by design the invocation then errors, so Lambda backs off)"
        return set(batch_ids), f"{type(invocation.error).__name__}: {first_line}"
    result = invocation.result
    if result is None:
        return set(), None
    if not isinstance(result, dict):
        return set(batch_ids), "the handler answered something other than a batch response"
    failures = result.get("batchItemFailures") or []
    ids: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in batch_ids:
            # Lambda treats a malformed partial-batch response as a failure of the whole batch.
            return set(batch_ids), f"malformed batchItemFailures entry {failure!r}"
        ids.add(str(identifier))
    return ids, None


class QueuePoller:
    """One event source mapping: a queue, a function, a batch size and a batching window."""

    def __init__(
        self,
        *,
        sqs: Any,
        queue_name: str,
        queue_url: str,
        queue_arn: str,
        region: str,
        function: str,
        batch_size: int,
        window_seconds: float,
        max_receive_count: int | None,
        dead_letter_name: str | None,
        invoke: Callable[[str, dict[str, Any]], Invocation],
        report: Callable[[str], None],
    ) -> None:
        self._sqs = sqs
        self.queue_name = queue_name
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self._region = region
        self.function = function
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.max_receive_count = max_receive_count
        self.dead_letter_name = dead_letter_name
        self._invoke = invoke
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poller-{queue_name}", daemon=True)
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._gather()
                if messages:
                    self.process(messages)
            except (BotoCoreError, ClientError) as exc:
                if self._stop.is_set():
                    return
                self._report(f"SQS  {self.queue_name}: {type(exc).__name__}: {exc}; polling again in 1 s")
                self._stop.wait(1)

    def _gather(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline: float | None = None
        while not self._stop.is_set() and len(messages) < self.batch_size:
            if deadline is None:
                wait = LONG_POLL_SECONDS
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = LONG_POLL_SECONDS if remaining >= LONG_POLL_SECONDS else 0
            received = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(MAX_RECEIVE, self.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if received and deadline is None:
                deadline = time.monotonic() + self.window_seconds
            messages.extend(received)
            if deadline is not None and self.window_seconds <= 0:
                break
            if not received and deadline is not None and wait == 0:
                self._stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        return messages

    def process(self, messages: list[dict[str, Any]]) -> Outcome:
        """Invoke the function with one batch and settle it the way Lambda does."""
        event = {"Records": [sqs_record(m, self.queue_arn, self._region) for m in messages]}
        invocation = self._invoke(self.function, event)
        batch_ids = {m["MessageId"] for m in messages}
        failed, error = failed_ids(invocation, batch_ids)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), MAX_RECEIVE):
            chunk = done[start : start + MAX_RECEIVE]
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        self.batches += 1
        outcome = Outcome(records=len(messages), deleted=len(done), failed=len(failed), error=error)
        self._report(self._summary(invocation, messages, outcome, failed))
        return outcome

    def _summary(
        self, invocation: Invocation, messages: list[dict[str, Any]], outcome: Outcome, failed: set[str]
    ) -> str:
        dead_lettered = sum(1 for n in invocation.notes if n.message == "record dead-lettered")
        parts = [f"{outcome.deleted - dead_lettered} done"]
        if dead_lettered:
            parts.append(f"{dead_lettered} dead-lettered by the function")
        if outcome.failed:
            parts.append(f"{outcome.failed} back on the queue")
        receives = [int((m.get("Attributes") or {}).get("ApproximateReceiveCount", "1")) for m in messages]
        line = (
            f"SQS  {self.queue_name} -> {self.function}: {outcome.records} record(s), "
            f"receive {min(receives)}-{max(receives)}: {', '.join(parts)} "
            f"({invocation.elapsed * 1000:.0f} ms)"
        )
        lines = [line]
        if outcome.error:
            lines.append(
                f"     ! the invocation failed, so the whole batch stays on the queue: {outcome.error}"
            )
        lines.extend(f"     {line}" for line in summarize(invocation.notes))
        if self.max_receive_count:
            for message in messages:
                count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
                if message["MessageId"] in failed and count >= self.max_receive_count:
                    lines.append(
                        f"     [{message['MessageId'][:8]}] failed its last allowed receive "
                        f"({count}/{self.max_receive_count}): SQS moves it to {self.dead_letter_name}"
                    )
        return "\n".join(lines)
