"""EmailFunction's REST API: the resolver and the send routes (send now, or defer to EmailQueue).
app.py imports this module on the first API request, so a container that only ever handles
EmailQueue batches never builds it."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Body, Header
from cio_relay.http_api import create_resolver, error_responses
from cio_relay.models.email import MAX_BODY_BYTES, Deferred, SendEmail, SendResult, Transactional
from cio_relay.models.push import SendPush
from cio_relay.models.sms import SendSMS
from cio_relay.transactional import IDEMPOTENCY_HEADER, REPLAYED_HEADER, get_mailer

app = create_resolver(title="cio-relay transactional messages", max_inflated_bytes=MAX_BODY_BYTES)

ANSWERS: dict[int, Any] = {
    200: {
        "description": f"sent (or, with header {REPLAYED_HEADER}: true, the first send's answer again)",
        "content": {"application/json": {"model": SendResult}},
    },
    202: {
        "description": "deferred to EmailQueue, or parked in the dead-letter queue (outcome unknown)",
        "content": {"application/json": {"model": Deferred}},
    },
    **error_responses(400, 403, 409, 413, 415, 422, 503),
}
IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)]


def answer(channel: str, request: Transactional, key: str | None) -> Response[SendResult | Deferred]:
    sent = get_mailer().send(channel, request, key=key, context=app.lambda_context)
    status = HTTPStatus.ACCEPTED if isinstance(sent, Deferred) else HTTPStatus.OK
    headers = {REPLAYED_HEADER: "true"} if isinstance(sent, SendResult) and sent.replayed else None
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=sent, headers=headers
    )


@app.post("/v1/send/email", responses=ANSWERS)
def send_email(
    request: Annotated[SendEmail, Body()], idempotency_key: IdempotencyKey = None
) -> Response[SendResult | Deferred]:
    return answer("email", request, idempotency_key)


@app.post("/v1/send/push", responses=ANSWERS)
def send_push(
    request: Annotated[SendPush, Body()], idempotency_key: IdempotencyKey = None
) -> Response[SendResult | Deferred]:
    return answer("push", request, idempotency_key)


@app.post("/v1/send/sms", responses=ANSWERS)
def send_sms(
    request: Annotated[SendSMS, Body()], idempotency_key: IdempotencyKey = None
) -> Response[SendResult | Deferred]:
    return answer("sms", request, idempotency_key)
