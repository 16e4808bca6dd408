"""SQS: enqueue, change visibility, dead-letter with a reason. One client per container, made lazily."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cio_relay.errors import EnqueueFailed
from cio_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, SendMessageBatchRequestEntryTypeDef

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
MAX_VISIBILITY_SECONDS = 43_200
MAX_ATTRIBUTES = 10
AWS_ERRORS = (BotoCoreError, ClientError)


@lru_cache(maxsize=1)
def sqs_client() -> SQSClient:
    # Short timeouts and few retries: an API caller waits on these calls.
    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("sqs", config=config)


def string_attributes(values: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    return {k: {"DataType": "String", "StringValue": v} for k, v in values.items() if v}


class Queues:
    """The SQS operations both functions need. `client` defaults to the container's client."""

    def __init__(self, client: SQSClient | None = None) -> None:
        self._client = client

    @property
    def client(self) -> SQSClient:
        return self._client or sqs_client()

    def send(self, queue_url: str, body: str, attributes: Mapping[str, str] | None = None) -> str:
        """Store one message; raises EnqueueFailed when SQS did not take it."""
        try:
            answer = self.client.send_message(
                QueueUrl=queue_url, MessageBody=body, MessageAttributes=string_attributes(attributes or {})
            )
        except AWS_ERRORS as exc:
            logger.error("enqueue failed", extra={"error": type(exc).__name__})
            raise EnqueueFailed("the message could not be queued; nothing was stored, try again") from exc
        return answer["MessageId"]

    def send_many(self, queue_url: str, bodies: Sequence[str]) -> list[str]:
        """Store many messages with SendMessageBatch (10 entries and 256 KB per call), in order.

        Raises EnqueueFailed if any entry was refused; entries sent before it stay queued, which the
        at-least-once contract allows (each call keeps its messageId).
        """
        ids: list[str] = []
        for chunk in _chunks(bodies):
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)
            ]
            try:
                answer = self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except AWS_ERRORS as exc:
                logger.error("enqueue failed", extra={"error": type(exc).__name__})
                raise EnqueueFailed("the messages could not be queued; try again") from exc
            if answer.get("Failed"):
                logger.error("enqueue partly failed", extra={"failed": len(answer["Failed"])})
                raise EnqueueFailed("some messages could not be queued; try again")
            by_entry = {entry["Id"]: entry["MessageId"] for entry in answer.get("Successful", [])}
            ids.extend(by_entry[str(i)] for i in range(len(chunk)))
        return ids

    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> bool:
        """Delay the next delivery; False (logged) when SQS refused, so the caller still reports failure."""
        try:
            self.client.change_message_visibility(
                QueueUrl=queue_url,
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(MAX_VISIBILITY_SECONDS, int(seconds))),
            )
        except AWS_ERRORS as exc:
            logger.warning("change visibility failed", extra={"error": type(exc).__name__})
            return False
        return True

    def dead_letter(
        self, dlq_url: str, body: str, reason: Mapping[str, str], original: Mapping[str, Any] | None = None
    ) -> bool:
        """Copy a message to the dead-letter queue with its failure reason; False (logged) if SQS refused.

        The reason attributes come first; the original message attributes are kept as room allows
        (SQS takes 10 per message).
        """
        attributes = string_attributes(reason)
        for name, value in (original or {}).items():
            if len(attributes) >= MAX_ATTRIBUTES:
                break
            data_type = value.get("dataType") or value.get("DataType") or "String"
            text = value.get("stringValue") or value.get("StringValue")
            if name not in attributes and text is not None:
                attributes[name] = {"DataType": data_type, "StringValue": text}
        try:
            self.client.send_message(QueueUrl=dlq_url, MessageBody=body, MessageAttributes=attributes)
        except AWS_ERRORS as exc:
            logger.error("dead-letter failed", extra={"error": type(exc).__name__})
            return False
        return True


def _chunks(bodies: Sequence[str]) -> list[list[str]]:
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode())
        if current and (len(current) == MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(body)
        size += length
    if current:
        chunks.append(current)
    return chunks
