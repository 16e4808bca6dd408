"""The events every contender sends: the same mixed identify/track calls, as SQS records or SDK calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tests.support import sqs_event

EVENTS_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-events"
EMAIL_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-email"
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


def events_batch(count: int) -> dict[str, Any]:
    """An SQS event of `count` EventsQueue records, as Lambda's event source mapping delivers it."""
    return sqs_event([queue_body(e) for e in events(count)], queue_arn=EVENTS_QUEUE_ARN)


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
    return sqs_event([email_body(offset + i) for i in range(count)], queue_arn=EMAIL_QUEUE_ARN)
