"""The events every contender sends: the same mixed identify/track calls, as SQS records or SDK calls."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

# As CloudFormation names the stack's queue.
EVENTS_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-EventsQueue-4QX2Z7N1K8PL"
# Lambda hands a function at most this much JSON per invocation (the synchronous payload limit): an SQS
# event source mapping delivers fewer records than BatchSize when BatchSize of them would not fit.
INVOKE_PAYLOAD_LIMIT = 6 * 1024 * 1024
# Receipt handles in real Lambda SQS events are a few hundred characters: 324 to 432 in the public
# examples we found. The bench gives every record one of the longest, so its events are as big as
# the ones Lambda builds and the 6 MB limit falls where it would.
RECEIPT_HANDLE_CHARS = 432
# A message the relay's API side sent, as SQS records it: an IAM role session.
SENDER_ID = "AROA3XFRBF23EXAMPLE1:cio-relay-EventsFunction-xJ3p8QwLm2Vd"
EMAIL_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-EmailQueue-8HD3M0V5R2TA"
START = 1_760_000_000
PLANS = ("free", "pro", "team", "enterprise")


def events(count: int) -> list[dict[str, Any]]:
    """`count` calls, alternating identify and track, about 175 bytes each as JSON; deterministic."""
    made: list[dict[str, Any]] = []
    for i in range(count):
        user = f"user-{i % 997:05d}"
        when = START + i
        common = {"userId": user, "timestamp": datetime.fromtimestamp(when, tz=UTC).isoformat()}
        if i % 2 == 0:
            traits = {
                "email": f"{user}@example.com",
                "first_name": "Ada",
                "plan": PLANS[i % len(PLANS)],
                "created_at": START - 86_400 * (i % 365),
            }
            made.append({"type": "identify", **common, "traits": traits, "unix_time": when})
        else:
            properties = {"order_id": f"o-{i:07d}", "total": round(9.99 + i % 50, 2), "items": 1 + i % 5}
            made.append(
                {
                    "type": "track",
                    **common,
                    "event": "order_completed",
                    "properties": properties,
                    "unix_time": when,
                }
            )
    return made


def queue_body(event: dict[str, Any]) -> str:
    """The EventsQueue message body: the Pipelines call in Customer.io's own JSON shape."""
    return json.dumps({k: v for k, v in event.items() if k != "unix_time"}, separators=(",", ":"))


def lambda_record(body: str, index: int, queue_arn: str = EVENTS_QUEUE_ARN) -> dict[str, Any]:
    """One record as Lambda's SQS event source mapping writes it, every field at a real length."""
    seed = f"{queue_arn}/{index}".encode()
    handle = base64.b64encode(hashlib.shake_256(seed).digest(RECEIPT_HANDLE_CHARS * 3 // 4)).decode()
    sent = 1_700_000_000_000 + index
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": handle,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent),
            "SenderId": SENDER_ID,
            "ApproximateFirstReceiveTimestamp": str(sent + 40),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


def events_batch(count: int) -> dict[str, Any]:
    """An SQS event of `count` EventsQueue records, as Lambda's event source mapping delivers it."""
    return {"Records": [lambda_record(queue_body(e), i) for i, e in enumerate(events(count))]}


def event_bytes(event: dict[str, Any]) -> int:
    """The size of the event as Lambda sends it (compact JSON)."""
    return len(json.dumps(event, separators=(",", ":")).encode())


def records_within(event: dict[str, Any], limit: int = INVOKE_PAYLOAD_LIMIT) -> int:
    """How many of the event's records (from the first) make an event of at most `limit` bytes: what
    Lambda hands the function when the queue holds at least that many."""
    size, records = len(b'{"Records":[]}'), event["Records"]
    for count, record in enumerate(records):
        size += len(json.dumps(record, separators=(",", ":")).encode()) + (1 if count else 0)
        if size > limit:
            return count
    return len(records)


def email_body(i: int) -> str:
    """An EmailQueue message body: a templated transactional send."""
    return json.dumps(
        {
            "transactional_message_id": 7,
            "to": f"person-{i}@example.com",
            "identifiers": {"id": f"user-{i:05d}"},
            "message_data": {"order_id": f"o-{i:07d}", "total": "42.50"},
        }
    )


def email_batch(count: int, offset: int = 0) -> dict[str, Any]:
    """An SQS event of `count` EmailQueue records with distinct payloads (so distinct idempotency keys)."""
    return {"Records": [lambda_record(email_body(offset + i), i, EMAIL_QUEUE_ARN) for i in range(count)]}
