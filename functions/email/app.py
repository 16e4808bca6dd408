"""EmailFunction: transactional email, push and SMS from API Gateway (send now or defer) and from
EmailQueue (send, many at a time)."""

from __future__ import annotations

# First, before anything imports pydantic: Powertools' batch utility then leaves out the parser models
# it names only in type hints (about 20 ms of every cold start; tests/unit/test_cold_start.py checks).
from cio_relay.delivery import Deadline, Outcomes, process_batch  # isort: split

import gc
import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from cio_relay.entry import route
from cio_relay.observability import instrument
from cio_relay.queues import Queues
from cio_relay.settings import get_settings
from cio_relay.transactional import deliver

if TYPE_CHECKING:
    from cio_relay.http_api import RelayResolver


@cache
def api() -> RelayResolver:
    """The REST resolver with its routes (email_api.py), built by the first API request.

    A container that only handles EmailQueue batches never imports Powertools' event handler, the
    OpenAPI machinery or the request models of the routes.
    """
    # Beside this file: Lambda puts the function's directory (the task root) on sys.path.
    resolver: RelayResolver = importlib.import_module("email_api").app
    gc.freeze()  # as instrument() does for the cold start: built once, kept by the container
    return resolver


def __getattr__(name: str) -> Any:
    """`app`: the resolver, for what reads it from this module (the OpenAPI document, tests)."""
    if name == "app":
        return api()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return api().resolve(event, context)


def deliver_batch(event: dict[str, Any], context: LambdaContext) -> Any:
    settings = get_settings()

    def send_records(records: list[SQSRecord], deadline: Deadline) -> Outcomes:
        return deliver(records, deadline, context=context)

    return process_batch(
        event,
        context,
        deliver=send_records,
        settings=settings,
        queues=Queues(),
        queue_url=settings.email_queue_url,
        dlq_url=settings.email_dlq_url,
    )


@instrument
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return route(event, context, api=resolve, batch=deliver_batch)
