"""SQS: enqueue, change visibility, dead-letter with a reason. One client per container, made lazily."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from cio_relay import clients
from cio_relay.errors import EnqueueFailed
from cio_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
MAX_VISIBILITY_SECONDS = 43_200
MAX_ATTRIBUTES = 10
AWS_ERRORS = (BotoCoreError, ClientError)
# Entries SendMessageBatch refused (not the caller's fault) are sent again this many times in all,
# after these pauses: a throttled or briefly failing queue usually takes them on the next try.
SEND_ATTEMPTS = 3
SEND_PAUSES_SECONDS = (0.05, 0.2)
# Attributes delivery reads from a message: kept first on every copy (dead-letter or re-enqueued).
DELIVERY_ATTRIBUTES = ("IdempotencyKey", "Channel", "SourceMessageId")
# Parallel ChangeMessageVisibilityBatch / SendMessageBatch calls when a big batch fails.
WORKERS = 8


def sqs_client() -> SQSClient:
    return clients.sqs()


def string_attributes(values: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    return {k: {"DataType": "String", "StringValue": v} for k, v in values.items() if v}


def copy_attributes(
    own: Mapping[str, str], original: Mapping[str, Any] | None
) -> dict[str, MessageAttributeValueTypeDef]:
    """A copy's attributes, at most SQS's 10: what delivery needs, then `own`, then the rest as room allows.

    `original` holds the record's attributes as Lambda hands them (stringValue/dataType) or as
    ReceiveMessage returns them (StringValue/DataType); `own` wins over an original of the same name.
    """
    kept: dict[str, MessageAttributeValueTypeDef] = {}
    source = original or {}

    def take(name: str, value: Mapping[str, Any]) -> None:
        text = value.get("stringValue") or value.get("StringValue")
        if name in kept or len(kept) >= MAX_ATTRIBUTES or text is None:
            return
        data_type = value.get("dataType") or value.get("DataType") or "String"
        kept[name] = {"DataType": data_type, "StringValue": text}

    for name in DELIVERY_ATTRIBUTES:
        if name in own:
            take(name, {"StringValue": own[name]})
        elif name in source:
            take(name, source[name])
    for name, text in own.items():
        if text:
            take(name, {"StringValue": text})
    for name, value in source.items():
        take(name, value)
    return kept


@dataclass(frozen=True)
class Copy:
    """A message to send to a queue (a dead-letter or re-enqueued copy of a record)."""

    key: str  # the caller's name for it (a record's message id)
    body: str
    attributes: Mapping[str, MessageAttributeValueTypeDef]


@dataclass(frozen=True)
class VisibilityChange:
    key: str
    receipt_handle: str
    seconds: int


class PartlyQueued(EnqueueFailed):
    """Some of the messages were stored and some were not; `queued` holds the stored ones' positions."""

    def __init__(self, message: str, *, queued: Sequence[int]) -> None:
        super().__init__(message)
        self.queued = tuple(queued)


class Queues:
    """The SQS operations both functions need. `client` defaults to the container's client."""

    def __init__(
        self, client: SQSClient | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self._sleep = sleep

    @property
    def client(self) -> SQSClient:
        return self._client or sqs_client()

    def send(self, queue_url: str, body: str, attributes: Mapping[str, str] | None = None) -> str:
        """Store one message; raises EnqueueFailed when SQS did not take it."""
        # No MessageAttributes at all when there are none: an empty map still costs botocore its
        # serialisation and the check of the answer's attribute MD5 (about a tenth of an API call).
        try:
            if attributes:
                answer = self.client.send_message(
                    QueueUrl=queue_url, MessageBody=body, MessageAttributes=string_attributes(attributes)
                )
            else:
                answer = self.client.send_message(QueueUrl=queue_url, MessageBody=body)
        except AWS_ERRORS as exc:
            logger.error("enqueue failed", extra={"error": type(exc).__name__})
            raise EnqueueFailed("the message could not be queued; nothing was stored, try again") from exc
        return answer["MessageId"]

    def send_many(self, queue_url: str, bodies: Sequence[str]) -> list[str]:
        """Store many messages with SendMessageBatch (10 entries and 256 KB per call), in order; a
        single message with SendMessage (SQS's own retries stand in for re-sending a refused entry).

        Entries SQS refused are sent again (SEND_ATTEMPTS in all). If some still fail, raises
        PartlyQueued naming the positions that were stored, so the caller can say which are queued.
        """
        if len(bodies) == 1:  # one call (identify, track, ...): SendMessage costs less CPU than a batch
            try:
                return [self.client.send_message(QueueUrl=queue_url, MessageBody=bodies[0])["MessageId"]]
            except AWS_ERRORS as exc:
                logger.error("enqueue failed", extra={"error": type(exc).__name__})
                raise _partly(1, {}) from exc
        ids: dict[int, str] = {}
        complete = True
        for chunk in _chunks(list(enumerate(bodies))):
            try:
                stored = self._send_chunk(queue_url, chunk)
            except AWS_ERRORS as exc:
                logger.error("enqueue failed", extra={"error": type(exc).__name__})
                raise _partly(len(bodies), ids) from exc
            ids.update(stored)
            complete = complete and len(stored) == len(chunk)
        if not complete:
            raise _partly(len(bodies), ids)
        return [ids[position] for position in range(len(bodies))]

    def _send_chunk(self, queue_url: str, chunk: list[tuple[int, str]]) -> dict[int, str]:
        """One chunk, re-sending refused entries; the positions stored and their SQS message ids."""
        stored: dict[int, str] = {}
        waiting = dict(chunk)
        for attempt in range(SEND_ATTEMPTS):
            if attempt:
                self._sleep(SEND_PAUSES_SECONDS[min(attempt, len(SEND_PAUSES_SECONDS)) - 1])
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(position), "MessageBody": body} for position, body in waiting.items()
            ]
            try:
                answer = self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except AWS_ERRORS:
                if not stored and attempt == 0:
                    raise
                break  # what is stored stays stored; the rest is reported as not queued
            for entry in answer.get("Successful", []):
                position = int(entry["Id"])
                stored[position] = entry["MessageId"]
                waiting.pop(position, None)
            failed = answer.get("Failed", [])
            if not waiting:
                break
            logger.warning(
                "enqueue partly failed",
                extra={"failed": len(failed), "codes": sorted({f.get("Code", "?") for f in failed})},
            )
            if any(f.get("SenderFault") for f in failed):
                break  # the request itself is at fault: sending it again cannot help
        return stored

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> bool:
        """Delay the next delivery; False (logged) when SQS refused, so the caller still reports failure."""
        refused = self.change_visibility_many(queue_url, [VisibilityChange("0", receipt_handle, seconds)])
        return not refused

    def change_visibility_many(
        self,
        queue_url: str,
        changes: Sequence[VisibilityChange],
        *,
        smaller: Callable[[VisibilityChange], int | None] | None = None,
        in_time: Callable[[], bool] = lambda: True,
    ) -> set[str]:
        """ChangeMessageVisibilityBatch, 10 entries a call, a few calls at a time; the keys SQS refused.

        `smaller(change)` gives a shorter timeout to ask for when SQS refused one (None: give up);
        once `in_time()` is False no further call starts (those records come back at the queue's
        visibility timeout instead).
        """
        groups = [list(changes[i : i + MAX_BATCH_ENTRIES]) for i in range(0, len(changes), MAX_BATCH_ENTRIES)]

        def change(group: list[VisibilityChange]) -> set[str]:
            refused: set[str] = set()
            while group:
                if not in_time():
                    return refused | {c.key for c in group}
                failed = self._change_group(queue_url, group)
                retry: list[VisibilityChange] = []
                for item in group:
                    if item.key not in failed:
                        continue
                    shorter = smaller(item) if smaller and failed[item.key] else None
                    if shorter is None or shorter >= item.seconds:
                        refused.add(item.key)
                    else:
                        retry.append(VisibilityChange(item.key, item.receipt_handle, shorter))
                group = retry
            return refused

        refused: set[str] = set()
        for result in _map(change, groups):
            refused |= result
        if refused:
            logger.warning("change visibility failed", extra={"records": len(refused)})
        return refused

    def _change_group(self, queue_url: str, group: list[VisibilityChange]) -> dict[str, bool]:
        """One ChangeMessageVisibilityBatch; refused keys -> whether asking for less could help."""
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {
                "Id": str(index),
                "ReceiptHandle": item.receipt_handle,
                "VisibilityTimeout": max(0, min(MAX_VISIBILITY_SECONDS, int(item.seconds))),
            }
            for index, item in enumerate(group)
        ]
        try:
            answer = self.client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except AWS_ERRORS as exc:
            logger.warning("change visibility failed", extra={"error": type(exc).__name__})
            return {item.key: False for item in group}
        return {
            group[int(failure["Id"])].key: failure.get("Code") == "InvalidParameterValue"
            for failure in answer.get("Failed", [])
        }

    def dead_letter(
        self, dlq_url: str, body: str, reason: Mapping[str, str], original: Mapping[str, Any] | None = None
    ) -> bool:
        """Copy a message to the dead-letter queue with its failure reason; False (logged) if SQS refused."""
        copy = Copy("0", body, copy_attributes(reason, original))
        return not self.send_copies(dlq_url, [copy])

    def send_copies(self, queue_url: str, copies: Sequence[Copy]) -> set[str]:
        """SendMessageBatch of whole copies (10 or 256 KB a call), a few calls at a time; the keys refused."""

        def send(group: list[Copy]) -> set[str]:
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "MessageBody": c.body, "MessageAttributes": dict(c.attributes)}
                for i, c in enumerate(group)
            ]
            try:
                answer = self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except AWS_ERRORS as exc:
                logger.error("copy failed", extra={"error": type(exc).__name__})
                return {c.key for c in group}
            return {group[int(f["Id"])].key for f in answer.get("Failed", [])}

        groups = [
            [copies[i] for i, _ in chunk] for chunk in _chunks([(i, c.body) for i, c in enumerate(copies)])
        ]
        refused: set[str] = set()
        for result in _map(send, groups):
            refused |= result
        if refused:
            logger.error("copy failed", extra={"records": len(refused)})
        return refused


def _partly(total: int, ids: Mapping[int, str]) -> PartlyQueued:
    queued = sorted(ids)
    if not queued:
        return PartlyQueued("the messages could not be queued; nothing was stored, try again", queued=())
    return PartlyQueued(f"only {len(queued)} of {total} messages were queued; try again", queued=queued)


def _map(function: Callable[[Any], set[str]], groups: Sequence[Any]) -> Iterable[set[str]]:
    if len(groups) <= 1:
        return [function(group) for group in groups]
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(groups))) as pool:
        return list(pool.map(function, groups))


def _chunks(items: Sequence[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """(position, body) pairs in SendMessageBatch-sized chunks: 10 entries and 256 KB at most."""
    chunks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    size = 0
    for item in items:
        length = len(item[1].encode())
        if current and (len(current) == MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += length
    if current:
        chunks.append(current)
    return chunks
