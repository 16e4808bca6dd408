"""Email logic: send now or defer to EmailQueue, and send queued emails; one send per idempotency key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSMessageAttributes, SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from pydantic import ValidationError

from cio_relay.cio import CustomerIO, get_customerio
from cio_relay.delivery import Deadline, Outcomes
from cio_relay.errors import (
    AuthRejected,
    ConfigurationError,
    InvalidRequest,
    KeyReused,
    Retryable,
    SendInProgress,
    StoreUnavailable,
)
from cio_relay.models import invalid_request
from cio_relay.models.email import Deferred, SendEmail, SendEmailResult
from cio_relay.observability import count, logger
from cio_relay.queues import Queues
from cio_relay.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_ATTRIBUTE = "IdempotencyKey"
MAX_KEY_CHARS = 256
# Records are keyed "<prefix>#<sha256 of the key>": fixed, so renaming the function keeps its records.
KEY_PREFIX = "cio-relay.send_email"


def canonical(payload: dict[str, Any]) -> bytes:
    """The payload as compact JSON with sorted keys: equal emails give equal bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SendKey:
    """What the idempotency record is keyed on (`key`) and checked against (`payload_hash`)."""

    key: str
    payload_hash: str
    field: str  # where the key came from, named in errors


def send_key(request: SendEmail, given: str | None, *, field: str) -> SendKey:
    """The caller's key, else the payload's hash. Raises InvalidRequest for an unusable key."""
    digest = hashlib.sha256(canonical(request.wire())).hexdigest()
    if given is None:
        return SendKey(f"sha256:{digest}", digest, field)
    if not 0 < len(given) <= MAX_KEY_CHARS or not given.isprintable():
        raise InvalidRequest(f"must be 1 to {MAX_KEY_CHARS} printable characters", field=field)
    return SendKey(given, digest, field)


def parse_queue_body(record: SQSRecord) -> tuple[SendEmail, str | None]:
    """An EmailQueue message: the /v1/send/email body, and its IdempotencyKey attribute if any."""
    try:
        request = SendEmail.model_validate_json(record.body or "")
    except ValidationError as exc:
        if exc.errors()[0].get("type") == "json_invalid":
            raise InvalidRequest("message body is not valid JSON", field="body") from None
        raise invalid_request(exc) from None
    attribute = SQSMessageAttributes(record.get("messageAttributes") or {})[IDEMPOTENCY_ATTRIBUTE]
    return request, attribute.string_value if attribute is not None else None


class Mailer:
    """Send each email once per idempotency key: now (API) or from EmailQueue (SQS).

    A send whose answer never came (read timeout) is retried, so Customer.io may get it twice:
    the at-least-once choice in docs/delivery.md. Every other repeat is answered from the idempotency record.
    """

    def __init__(
        self,
        settings: Settings,
        queues: Queues,
        customerio: CustomerIO,
        store: BasePersistenceLayer,
    ) -> None:
        self._settings = settings
        self._queues = queues
        self._cio = customerio
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="payload_hash",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=settings.idempotency_ttl_seconds,
            hash_function="sha256",
            response_hook=_replayed,
        )
        # Decorated here rather than at import: the table and TTL come from the settings, and
        # importing the layer creates no AWS client.
        self._send_once: Callable[..., SendEmailResult] = idempotent_function(
            data_keyword_argument="key",
            persistence_store=store,
            config=self.config,
            output_serializer=PydanticSerializer(SendEmailResult),
            key_prefix=KEY_PREFIX,
        )(self._send)

    # ---- API side -------------------------------------------------------------------------
    def send(
        self, request: SendEmail, *, key: str | None, context: LambdaContext
    ) -> SendEmailResult | Deferred:
        """Send now and return Customer.io's answer (the first answer again for a known key).

        A retryable failure or refused credentials defers the email to EmailQueue under the same key.
        Raises InvalidRequest, KeyReused, SendInProgress, Permanent, StoreUnavailable, and EnqueueFailed
        or ConfigurationError when the email could not be deferred: then nothing holds it.
        """
        self.config.register_lambda_context(context)
        identity = send_key(request, key, field=IDEMPOTENCY_HEADER)
        try:
            return self.send_once(request, identity)
        except (Retryable, AuthRejected) as exc:
            return self._defer(request, identity.key, exc)

    def _defer(self, request: SendEmail, key: str, exc: Retryable | AuthRejected) -> Deferred:
        queue_url = self._settings.require("email_queue_url")
        body = canonical(request.wire()).decode()
        message_id = self._queues.send(queue_url, body, {IDEMPOTENCY_ATTRIBUTE: key})
        logger.warning(
            "email deferred to the queue",
            extra={"reason": exc.code, "status": exc.status, "message_id": message_id},
        )
        count("EmailDeferred")
        return Deferred(message_id=message_id, reason=exc.code)

    # ---- SQS side -------------------------------------------------------------------------
    def deliver(self, records: list[SQSRecord], deadline: Deadline, *, context: LambdaContext) -> Outcomes:
        """Send each record once per key; a record left out (time ran short) comes back from the queue."""
        self.config.register_lambda_context(context)
        outcomes: dict[str, BaseException | None] = {}
        for record in records:
            if not deadline.allows_request():
                break
            outcomes[record.message_id] = self._deliver_one(record)
        return outcomes

    def _deliver_one(self, record: SQSRecord) -> BaseException | None:
        try:
            request, key = parse_queue_body(record)
            self.send_once(request, send_key(request, key, field=IDEMPOTENCY_ATTRIBUTE))
        except Exception as exc:  # each record's failure goes to the delivery table, not to its neighbours
            return exc
        return None

    # ---- both -----------------------------------------------------------------------------
    def send_once(self, request: SendEmail, identity: SendKey) -> SendEmailResult:
        """Send unless the key already has a completed send, whose answer is returned instead.

        A send that raises leaves no record, so its retry (API or queue) sends under the same key.
        """
        try:
            return self._send_once(request=request, key=identity)
        except IdempotencyValidationError:
            raise KeyReused(
                "this key was already used for a different email; use a new key for a new email",
                field=identity.field,
            ) from None
        except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
            raise SendInProgress("an email with this idempotency key is being sent; retry shortly") from None
        except IdempotencyPersistenceLayerError as exc:
            logger.error("idempotency table unavailable", extra={"error": type(exc.__cause__).__name__})
            raise StoreUnavailable("the idempotency table is unavailable; retry later") from exc

    def _send(self, *, request: SendEmail, key: SendKey) -> SendEmailResult:
        result = self._cio.app.send_email(request)
        logger.info("email sent", extra={"delivery_id": result.delivery_id})
        count("EmailSent")
        return result


def _replayed(response: Any, idempotent_data: DataRecord) -> Any:
    logger.info("duplicate email not sent again", extra={"status": idempotent_data.status})
    count("EmailDuplicate")
    return response


@lru_cache(maxsize=1)
def dynamodb_client() -> DynamoDBClient:
    # Short timeouts: an API caller waits on these calls.
    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("dynamodb", config=config)


@lru_cache(maxsize=1)
def get_mailer() -> Mailer:
    """The container's Mailer; raises ConfigurationError when IDEMPOTENCY_TABLE is not set."""
    settings = get_settings()
    store = DynamoDBPersistenceLayer(
        table_name=settings.require("idempotency_table"), boto3_client=dynamodb_client()
    )
    return Mailer(settings, Queues(), get_customerio(), store)


def deliver(records: list[SQSRecord], deadline: Deadline, *, context: LambdaContext) -> Outcomes:
    """EmailQueue records through the container's Mailer; a configuration error fails each record
    with its reason, so the delivery table backs them off instead of the invocation crashing."""
    try:
        mailer = get_mailer()
    except ConfigurationError as exc:
        return {record.message_id: exc for record in records}
    return mailer.deliver(records, deadline, context=context)


def reset() -> None:
    """Forget the per-container Mailer and DynamoDB client (tests)."""
    get_mailer.cache_clear()
    dynamodb_client.cache_clear()
