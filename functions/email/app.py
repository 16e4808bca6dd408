"""EmailFunction: transactional email, push and SMS from API Gateway (send now or defer) and from
EmailQueue (send, many at a time)."""

from __future__ import annotations

# First, before anything imports pydantic: Powertools' batch utility then leaves out the parser models
# it names only in type hints (about 20 ms of every cold start; tests/unit/test_cold_start.py checks).
from cio_relay.delivery import Deadline, Outcomes, process_batch  # isort: split

from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from cio_relay.entry import RestSide, route
from cio_relay.observability import instrument
from cio_relay.queues import Queues
from cio_relay.settings import get_settings
from cio_relay.transactional import deliver

rest = RestSide("email_api")  # email_api.py: the routes, built by the first API request
__getattr__ = rest.module_attribute  # `app`, for what reads it from this module (OpenAPI, tests)


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
    return route(event, context, api=rest.resolve, batch=deliver_batch)
