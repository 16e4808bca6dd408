"""`cio-relay dlq list|show|redrive`: what waits in the dead-letter queues, why, and moving it back."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from botocore.exceptions import ClientError

from cio_relay_cli.aws import QUEUES, Aws

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, MessageTypeDef

# What delivery puts on a message it dead-letters about that failure; dropped when it is redriven.
# SourceMessageId stays: it names the call's first message (its derived messageId comes from it), and
# copies naming the same one (a crash between copying and acknowledging) count as one message.
REASON_ATTRIBUTES = ("FailureReason", "FailureStatus", "ReceiveCount", "LineageReceiveCount", "RequeueCount")
SOURCE_MESSAGE_ID = "SourceMessageId"


@dataclass(frozen=True)
class QueuePair:
    name: str  # "events" or "email"
    dlq_url: str
    source_url: str | None


def queue_pairs(args: argparse.Namespace, aws: Aws, environ: Mapping[str, str]) -> dict[str, QueuePair]:
    """Dead-letter queues (and their sources) from flags, else --stack, else the environment."""
    resources = aws.stack_queue_urls(args.stack) if args.stack else {}
    pairs: dict[str, QueuePair] = {}
    for name, (source_id, dlq_id) in QUEUES.items():
        prefix = name.upper()
        dlq = getattr(args, f"{name}_dlq_url") or resources.get(dlq_id) or environ.get(f"{prefix}_DLQ_URL")
        source = (
            getattr(args, f"{name}_queue_url")
            or resources.get(source_id)
            or environ.get(f"{prefix}_QUEUE_URL")
        )
        if dlq:
            pairs[name] = QueuePair(name, dlq, source or None)
    return pairs


def depth(sqs: SQSClient, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def peek(sqs: SQSClient, url: str, *, limit: int = 10, hold_seconds: int = 20) -> list[MessageTypeDef]:
    """Up to `limit` messages, read and then made visible again at once (nothing is consumed)."""
    seen: dict[str, MessageTypeDef] = {}
    handles: list[str] = []
    try:
        while len(seen) < limit:
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(10, limit - len(seen)),
                VisibilityTimeout=hold_seconds,
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            for message in batch:
                handles.append(message["ReceiptHandle"])
                seen.setdefault(message["MessageId"], message)
    finally:
        for start in range(0, len(handles), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start : start + 10])
            ]
            sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
    return list(seen.values())


def source_id(message: Mapping[str, Any]) -> str:
    """The first message of a copy's line (its own id when delivery did not copy it)."""
    return attribute(message, SOURCE_MESSAGE_ID) or str(message["MessageId"])


def scan(sqs: SQSClient, url: str, *, hold_seconds: int = 60) -> list[MessageTypeDef]:
    """Every message of a queue, held invisible for `hold_seconds` (the caller releases or deletes them)."""
    seen: dict[str, MessageTypeDef] = {}
    while batch := sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=hold_seconds,
        WaitTimeSeconds=0,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", []):
        for message in batch:
            seen[message["MessageId"]] = message  # the latest receipt handle is the one that works
    return list(seen.values())


def release(sqs: SQSClient, url: str, messages: list[MessageTypeDef]) -> None:
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages[start : start + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]


def delete(sqs: SQSClient, url: str, messages: list[MessageTypeDef]) -> None:
    for start in range(0, len(messages), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages[start : start + 10])
        ]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]


def duplicates(messages: list[MessageTypeDef]) -> list[MessageTypeDef]:
    """Every copy after the first of each source message id."""
    first: set[str] = set()
    extra: list[MessageTypeDef] = []
    for message in messages:
        key = source_id(message)
        if key in first:
            extra.append(message)
        first.add(key)
    return extra


def drop_duplicates(sqs: SQSClient, url: str) -> int:
    """Delete the extra copies of each source message from a dead-letter queue; how many were deleted."""
    messages = scan(sqs, url)
    extra = duplicates(messages)
    ids = {m["MessageId"] for m in extra}
    delete(sqs, url, extra)
    release(sqs, url, [m for m in messages if m["MessageId"] not in ids])
    return len(extra)


def attribute(message: Mapping[str, Any], name: str) -> str | None:
    value = (message.get("MessageAttributes") or {}).get(name) or {}
    text = value.get("StringValue")
    return None if text is None else str(text)


def summary(queue: str, body: str) -> str:
    """What a message is, without personal data: call types and event names, or the email template."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"non-JSON body, {len(body.encode())} bytes"
    if not isinstance(data, dict):
        return f"JSON {type(data).__name__}, {len(body.encode())} bytes"
    if queue == "email":
        recipients = sum(
            len([a for a in str(data.get(k) or "").split(",") if a.strip()]) for k in ("to", "cc", "bcc")
        )
        template = data.get("transactional_message_id")
        what = f"template {template!r}" if template is not None else "inline email"
        return f"{what}, {recipients} recipient(s)"
    calls = data["batch"] if isinstance(data.get("batch"), list) else [data]
    described = []
    for call in calls[:5]:
        if isinstance(call, dict):
            event = f" {call['event']!r}" if call.get("type") == "track" and call.get("event") else ""
            described.append(f"{call.get('type', '?')}{event}")
    more = f" (+{len(calls) - 5} more)" if len(calls) > 5 else ""
    prefix = f"batch of {len(calls)}: " if "batch" in data else ""
    return prefix + ", ".join(described) + more


def dlq_list(sqs: SQSClient, pairs: Mapping[str, QueuePair], out: TextIO) -> int:
    """Each dead-letter queue's count; copies of one source message count once."""
    for pair in pairs.values():
        messages = scan(sqs, pair.dlq_url, hold_seconds=30)
        release(sqs, pair.dlq_url, messages)
        visible, in_flight = depth(sqs, pair.dlq_url)
        extra = len(duplicates(messages))
        name = pair.dlq_url.rstrip("/").rsplit("/", 1)[-1]
        flight = f" ({in_flight} in flight)" if in_flight else ""
        copies = f" (+{extra} duplicate copies, not counted)" if extra else ""
        print(f"{pair.name:<7} {name:<40} {visible - extra} message(s){copies}{flight}", file=out)
    return 0


def dlq_show(
    sqs: SQSClient, pair: QueuePair, out: TextIO, *, limit: int, bodies: bool, max_chars: int
) -> int:
    messages = peek(sqs, pair.dlq_url, limit=limit)
    visible, _ = depth(sqs, pair.dlq_url)
    print(f"{pair.name} dead-letter queue: showing {len(messages)} of {visible}", file=out)
    for message in messages:
        attributes = message.get("Attributes") or {}
        sent = attributes.get("SentTimestamp")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(sent) / 1000)) if sent else "?"
        reason = attribute(message, "FailureReason")
        status = attribute(message, "FailureStatus")
        body = message.get("Body", "")
        print(f"- {message['MessageId']}  sent {when} UTC", file=out)
        if reason:
            print(f"  reason: [{status or '?'}] {reason}", file=out)
        else:
            print(
                "  reason: moved by SQS after maxReceiveCount receives (retryable failures); "
                "the function's logs hold each attempt (search for the message id)",
                file=out,
            )
        print(f"  what:   {summary(pair.name, body)}", file=out)
        if bodies:
            cut = body if len(body) <= max_chars else body[:max_chars] + f"... ({len(body)} chars)"
            print(f"  body:   {cut}", file=out)
    return 0


def _arn(sqs: SQSClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def source_of(sqs: SQSClient, pair: QueuePair) -> str | None:
    if pair.source_url:
        return pair.source_url
    sources = sqs.list_dead_letter_source_queues(QueueUrl=pair.dlq_url).get("queueUrls", [])
    return sources[0] if len(sources) == 1 else None


def dlq_redrive(
    sqs: SQSClient, pair: QueuePair, out: TextIO, *, move_task: bool = True, wait: bool = False
) -> int:
    """Move every message of a dead-letter queue back to its source queue."""
    source = source_of(sqs, pair)
    if not source:
        print(f"{pair.name}: source queue unknown; pass --{pair.name}-queue-url", file=out)
        return 2
    dropped = drop_duplicates(sqs, pair.dlq_url)
    if dropped:
        print(f"{pair.name}: deleted {dropped} duplicate copies (same source message id)", file=out)
    if move_task:
        try:
            handle = sqs.start_message_move_task(
                SourceArn=_arn(sqs, pair.dlq_url), DestinationArn=_arn(sqs, source)
            )["TaskHandle"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            print(
                f"{pair.name}: StartMessageMoveTask unavailable ({code}); moving messages one by one",
                file=out,
            )
        else:
            print(f"{pair.name}: SQS move task started ({handle[:24]}...)", file=out)
            return _wait_for_task(sqs, pair, out) if wait else 0
    moved, failed = move_messages(sqs, pair.dlq_url, source)
    print(f"{pair.name}: moved {moved} message(s) back to {source.rsplit('/', 1)[-1]}", file=out)
    if failed:
        print(f"{pair.name}: {failed} message(s) could not be sent; they stay on the DLQ", file=out)
    return 1 if failed else 0


def _wait_for_task(sqs: SQSClient, pair: QueuePair, out: TextIO, timeout: float = 900) -> int:
    deadline = time.monotonic() + timeout
    arn = _arn(sqs, pair.dlq_url)
    while time.monotonic() < deadline:
        tasks = sqs.list_message_move_tasks(SourceArn=arn, MaxResults=1).get("Results", [])
        task = tasks[0] if tasks else {}
        status = task.get("Status")
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            moved = task.get("ApproximateNumberOfMessagesMoved", 0)
            print(f"{pair.name}: move task {status.lower()}, {moved} message(s) moved", file=out)
            return 0 if status == "COMPLETED" else 1
        time.sleep(2)
    print(f"{pair.name}: move task still running; check with `dlq list`", file=out)
    return 1


def move_messages(
    sqs: SQSClient, dlq_url: str, destination: str, *, settle_seconds: float = 5.0
) -> tuple[int, int]:
    """Receive/send/delete until the DLQ is empty; returns (moved, failed to send)."""
    moved = failed = 0
    moved_sources: set[str] = set()
    quiet_since: float | None = None
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            visible, in_flight = depth(sqs, dlq_url)
            if visible:
                continue
            # Someone else may hold messages for a moment (a `dlq show`, the local sandbox page).
            quiet_since = quiet_since or time.monotonic()
            if not in_flight or time.monotonic() - quiet_since > settle_seconds:
                return moved, failed
            time.sleep(0.2)
            continue
        quiet_since = None
        copies = [m for m in messages if source_id(m) in moved_sources]
        messages = [m for m in messages if source_id(m) not in moved_sources]
        delete(sqs, dlq_url, copies)  # a copy of what this redrive already moved back
        if not messages:
            continue
        entries = [
            {"Id": str(i), "MessageBody": m.get("Body", ""), "MessageAttributes": _forwarded(m)}
            for i, m in enumerate(messages)
        ]
        answer = sqs.send_message_batch(QueueUrl=destination, Entries=entries)  # type: ignore[arg-type]
        sent = {entry["Id"] for entry in answer.get("Successful", [])}
        failed += len(messages) - len(sent)
        done = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if str(i) in sent
        ]
        if done:
            sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)  # type: ignore[arg-type]
        moved_sources.update(source_id(m) for i, m in enumerate(messages) if str(i) in sent)
        moved += len(done)
        if not done:
            return moved, failed


def _forwarded(message: Mapping[str, Any]) -> dict[str, MessageAttributeValueTypeDef]:
    # The moved message is new to SQS: it names its line's first message, so delivery derives the
    # same messageId for its calls as it did before the dead-letter.
    kept: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if name in REASON_ATTRIBUTES:
            continue
        item: dict[str, Any] = {"DataType": value.get("DataType", "String")}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                item[key] = value[key]
        kept[name] = item  # type: ignore[assignment]
    if SOURCE_MESSAGE_ID not in kept and len(kept) < 10:  # SQS takes 10 attributes
        kept[SOURCE_MESSAGE_ID] = {"DataType": "String", "StringValue": source_id(message)}
    return kept
