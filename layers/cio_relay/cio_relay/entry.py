"""Tells an SQS batch from an API Gateway request and routes each one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext


def is_sqs_batch(event: Any) -> bool:
    """An SQS event has Records whose eventSource is aws:sqs. Anything else is an API request:
    handed to the batch processor, it would read as an empty, successful batch."""
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        bool(records)
        and isinstance(records, list)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def route(
    event: dict[str, Any],
    context: LambdaContext,
    *,
    api: Callable[[dict[str, Any], LambdaContext], dict[str, Any]],
    batch: Callable[[dict[str, Any], LambdaContext], Any],
) -> Any:
    return batch(event, context) if is_sqs_batch(event) else api(event, context)
