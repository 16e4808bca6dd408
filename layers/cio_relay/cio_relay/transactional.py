"""Transactional messages (email, push, SMS): send now or defer to EmailQueue, and send queued ones,
many at a time; exactly once per idempotency key, and never again once Customer.io accepted one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.shared.functions import strtobool
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSMessageAttributes, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from cio_relay import clients
from cio_relay.cio import CustomerIO, get_customerio
from cio_relay.delivery import Deadline, Outcomes
from cio_relay.errors import (
    AuthRejected,
    ConfigurationError,
    CustomerIOError,
    InvalidRequest,
    KeyReused,
    OutcomeUnknown,
    Retryable,
    SendInProgress,
    StoreUnavailable,
)
from cio_relay.models import invalid_request
from cio_relay.models.email import Deferred, SendEmail, SendResult, Transactional
from cio_relay.observability import count, logger
from cio_relay.queues import Queues
from cio_relay.settings import Settings, get_settings

# Powertools' idempotency utility (and boto3, which its DynamoDB store imports) is imported by the first
# send that needs it, not by the cold start: an API request answered from validation alone never does.
if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from cio_relay.send_records import SendRecords

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_ATTRIBUTE = "IdempotencyKey"
REPLAYED_HEADER = "Idempotent-Replayed"
CHANNEL_ATTRIBUTE = "Channel"
# A dead-letter copy names the message it came from; a redrive of it keeps that lineage.
LINEAGE_ATTRIBUTE = "SourceMessageId"
CHANNELS = ("email", "push", "sms")
MAX_KEY_CHARS = 256
# Records are keyed "<prefix>#<sha256 of the key>": fixed, so renaming the function keeps its records.
KEY_PREFIX = "cio-relay.send_email"
HASH_KEY_PREFIX = "sha256:"
RECORD_ATTEMPTS = 2  # further tries of a completion write that failed after a send
METRIC = {"email": "Email", "push": "Push", "sms": "SMS"}


def model_for(channel: str) -> type[Transactional]:
    """The request model of a channel (push and SMS models are built on first use)."""
    if channel == "push":
        from cio_relay.models.push import SendPush  # noqa: PLC0415 - built on first use

        return SendPush
    if channel == "sms":
        from cio_relay.models.sms import SendSMS  # noqa: PLC0415 - built on first use

        return SendSMS
    return SendEmail


def canonical(payload: dict[str, Any]) -> bytes:
    """The payload as compact JSON with sorted keys: equal messages give equal bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def payload_digest(channel: str, request: Transactional) -> str:
    text = canonical(request.wire())
    # An email's hash is its JSON alone, as before push and SMS existed, so stored records still match.
    return hashlib.sha256(text if channel == "email" else channel.encode() + b"\n" + text).hexdigest()


# channel, request, key (None: idempotency off) of one queued message, and the batch's tally of sends
Prepared = tuple[str, "Transactional", "SendKey | None", list[str]]


@dataclass(frozen=True)
class SendKey:
    """What the idempotency record is keyed on (`key`) and checked against (`payload_hash`)."""

    key: str
    payload_hash: str
    field: str  # where the key came from, named in errors


def idempotency_disabled() -> bool:
    """Powertools' own switch (POWERTOOLS_IDEMPOTENCY_DISABLED, for tests and benchmarks): then no key
    is derived and no record is kept."""
    return strtobool(os.getenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "false"))


def checked_key(given: str, field: str) -> str:
    if not 0 < len(given) <= MAX_KEY_CHARS or not given.isprintable():
        raise InvalidRequest(f"must be 1 to {MAX_KEY_CHARS} printable characters", field=field)
    return given


def api_key(channel: str, request: Transactional, given: str | None, *, dedupe: bool) -> SendKey | None:
    """The caller's key; without one, the payload's hash when de-duplication is on, else none (a
    deliberate repeat is a new send). Raises InvalidRequest for an unusable key."""
    if given is not None:
        return SendKey(
            checked_key(given, IDEMPOTENCY_HEADER), payload_digest(channel, request), IDEMPOTENCY_HEADER
        )
    if dedupe:
        digest = payload_digest(channel, request)
        return SendKey(f"{HASH_KEY_PREFIX}{digest}", digest, IDEMPOTENCY_HEADER)
    return None


def queue_key(record: SQSRecord, channel: str, request: Transactional, *, dedupe: bool) -> SendKey:
    """The IdempotencyKey attribute; else the payload's hash when de-duplication is on; else the SQS
    message id, taken from the lineage attribute when the record is a redriven dead-letter copy, so
    SQS redeliveries and redrives of one message are one send."""
    attributes = SQSMessageAttributes(record.get("messageAttributes") or {})
    digest = payload_digest(channel, request)
    given = attributes[IDEMPOTENCY_ATTRIBUTE]
    if given is not None and given.string_value:
        return SendKey(checked_key(given.string_value, IDEMPOTENCY_ATTRIBUTE), digest, IDEMPOTENCY_ATTRIBUTE)
    if dedupe:
        return SendKey(f"{HASH_KEY_PREFIX}{digest}", digest, IDEMPOTENCY_ATTRIBUTE)
    lineage = attributes[LINEAGE_ATTRIBUTE]
    message_id = lineage.string_value if lineage is not None and lineage.string_value else record.message_id
    return SendKey(f"sqs:{message_id}", digest, IDEMPOTENCY_ATTRIBUTE)


def parse_queue_record(record: SQSRecord) -> tuple[str, Transactional]:
    """An EmailQueue message: its channel (attribute `Channel`, absent = email) and its request."""
    attribute = SQSMessageAttributes(record.get("messageAttributes") or {})[CHANNEL_ATTRIBUTE]
    channel = (attribute.string_value or "email").strip().lower() if attribute is not None else "email"
    if channel not in CHANNELS:
        raise InvalidRequest(f"must be one of {', '.join(CHANNELS)}", field=CHANNEL_ATTRIBUTE)
    try:
        request = model_for(channel).model_validate_json(record.body or "")
    except ValidationError as exc:
        if exc.errors()[0].get("type") == "json_invalid":
            raise InvalidRequest("message body is not valid JSON", field="body") from None
        raise invalid_request(exc) from None
    return channel, request


class Mailer:
    """Send each message once per idempotency key: now (API) or from EmailQueue (SQS), many at a time.

    Customer.io's 2xx is final: a send it accepted is never made again, even when its answer has an odd
    shape or the completion record cannot be written. Only a send whose answer never came is ambiguous:
    resent (EMAIL_ON_AMBIGUOUS=resend) or parked in the dead-letter queue (dead_letter).
    """

    def __init__(
        self,
        settings: Settings,
        queues: Queues,
        customerio: CustomerIO,
        store: BasePersistenceLayer,
        window_store: BasePersistenceLayer | None = None,
    ) -> None:
        self._settings = settings
        self._queues = queues
        self._cio = customerio
        self._resend = settings.email_on_ambiguous == "resend"
        self._dedupe = settings.email_dedupe_window_seconds > 0
        self._stores: dict[bool, BasePersistenceLayer] = {False: store}
        self._once: dict[bool, Callable[..., SendResult]] = {
            False: self._decorate(store, settings.idempotency_ttl_seconds)
        }
        if self._dedupe:
            hashed = window_store or store
            self._stores[True] = hashed
            self._once[True] = self._decorate(hashed, settings.email_dedupe_window_seconds)

    def _decorate(self, store: BasePersistenceLayer, ttl: int) -> Callable[..., SendResult]:
        from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - see the imports
            IdempotencyConfig,
            idempotent_function,
        )
        from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import (  # noqa: PLC0415
            PydanticSerializer,
        )

        config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="payload_hash",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=ttl,
            hash_function="sha256",
            response_hook=_replayed,
        )
        # Configured now, not on the first send: Powertools configures a store on first use without a
        # lock, and the first sends of a batch run in parallel.
        store.configure(config, KEY_PREFIX, KEY_PREFIX)
        decorated: Callable[..., SendResult] = idempotent_function(
            data_keyword_argument="key",
            persistence_store=store,
            config=config,
            output_serializer=PydanticSerializer(SendResult),
            key_prefix=KEY_PREFIX,
        )(self._send)
        self._configs = [*getattr(self, "_configs", []), config]
        return decorated

    def _register(self, context: LambdaContext) -> None:
        for config in self._configs:
            config.register_lambda_context(context)

    # ---- API side -------------------------------------------------------------------------
    def send(
        self, channel: str, request: Transactional, *, key: str | None, context: LambdaContext
    ) -> SendResult | Deferred:
        """Send now and return Customer.io's answer (the first answer again, marked replayed, for a
        known key). A retryable failure or refused credentials defers the message to EmailQueue under
        its key (a relay-made one when the caller gave none); an unknown outcome under
        EMAIL_ON_AMBIGUOUS=dead_letter parks it in the dead-letter queue.
        Raises InvalidRequest, KeyReused, SendInProgress, Permanent, StoreUnavailable, and EnqueueFailed
        or ConfigurationError when the message could not be deferred: then nothing holds it.
        """
        self._register(context)
        identity = api_key(channel, request, key, dedupe=self._dedupe)
        try:
            return self.send_once(channel, request, identity)
        except (Retryable, AuthRejected) as exc:
            return self._defer(channel, request, identity, exc)
        except OutcomeUnknown as exc:
            return self._park(channel, request, identity, exc)

    def _attributes(self, channel: str, identity: SendKey | None) -> dict[str, str]:
        key = identity.key if identity is not None else f"relay:{uuid.uuid4()}"
        return {IDEMPOTENCY_ATTRIBUTE: key, CHANNEL_ATTRIBUTE: channel}

    def _defer(
        self, channel: str, request: Transactional, identity: SendKey | None, exc: CustomerIOError
    ) -> Deferred:
        queue_url = self._settings.require("email_queue_url")
        body = canonical(request.wire()).decode()
        message_id = self._queues.send(queue_url, body, self._attributes(channel, identity))
        logger.warning(
            "message deferred to the queue",
            extra={"channel": channel, "reason": exc.code, "status": exc.status, "message_id": message_id},
        )
        count(f"{METRIC[channel]}Deferred")
        return Deferred(message_id=message_id, reason=exc.code)

    def _park(
        self, channel: str, request: Transactional, identity: SendKey | None, exc: OutcomeUnknown
    ) -> Deferred:
        dlq_url = self._settings.require("email_dlq_url")
        reason = {"FailureReason": exc.message[:1000], "FailureStatus": exc.code}
        attributes = {**reason, **self._attributes(channel, identity)}
        message_id = self._queues.send(dlq_url, canonical(request.wire()).decode(), attributes)
        logger.error(
            "outcome unknown; message parked in the dead-letter queue", extra={"message_id": message_id}
        )
        count("OutcomeUnknown")
        return Deferred(status="dead_lettered", message_id=message_id, reason=exc.code)

    # ---- SQS side -------------------------------------------------------------------------
    def deliver(self, records: list[SQSRecord], deadline: Deadline, *, context: LambdaContext) -> Outcomes:
        """Send the records, up to EMAIL_SEND_CONCURRENCY at a time, each with its own outcome.

        Records that share an idempotency key are sent one after another, so the second finds the
        first one's answer instead of a send in progress. A record not started because time ran short
        is left out: it comes back from the queue.
        """
        self._register(context)
        outcomes: dict[str, BaseException | None] = {}
        lanes: dict[str, list[tuple[SQSRecord, Prepared]]] = {}
        keyed = not idempotency_disabled()
        sent: list[str] = []  # the channel of each send made (list.append is atomic across threads)
        for record in records:
            try:
                channel, request = parse_queue_record(record)
                identity = queue_key(record, channel, request, dedupe=self._dedupe) if keyed else None
            except Exception as exc:  # a bad record is dead-lettered or retried alone (delivery table)
                outcomes[record.message_id] = exc
                continue
            lane_key = identity.key if identity is not None else record.message_id
            lanes.setdefault(lane_key, []).append((record, (channel, request, identity, sent)))

        def run(lane: list[tuple[SQSRecord, Prepared]]) -> dict[str, BaseException | None]:
            done: dict[str, BaseException | None] = {}
            for record, prepared in lane:
                if not deadline.allows_request():
                    break
                done[record.message_id] = self._attempt(*prepared)
            return done

        workers = min(self._settings.email_send_concurrency, len(lanes))
        if workers <= 1:
            for lane in lanes.values():
                outcomes.update(run(lane))
        else:
            for done in executor(self._settings.email_send_concurrency).map(run, lanes.values()):
                outcomes.update(done)
        # One line and one metric per channel for the batch (each send is logged at DEBUG).
        for channel, number in Counter(sent).items():
            count(f"{METRIC[channel]}Sent", number)
        if sent:
            logger.info("messages sent", extra={"sent": len(sent), "records": len(records)})
        return outcomes

    def _attempt(
        self, channel: str, request: Transactional, identity: SendKey | None, sent: list[str]
    ) -> BaseException | None:
        try:
            self.send_once(channel, request, identity, sent)
        except Exception as exc:  # each record's failure goes to the delivery table, not to its neighbours
            return exc
        return None

    # ---- both -----------------------------------------------------------------------------
    def send_once(
        self,
        channel: str,
        request: Transactional,
        identity: SendKey | None,
        tally: list[str] | None = None,
    ) -> SendResult:
        """Send unless the key already has a completed send, whose answer is returned instead.

        A send that raises leaves no record, so its retry (API or queue) sends under the same key. A
        send Customer.io accepted is done even when its record cannot be completed (retried, logged).
        """
        if identity is None:
            return self._send(channel=channel, request=request, key=None, sent=[], tally=tally)
        from aws_lambda_powertools.utilities.idempotency.exceptions import (  # noqa: PLC0415 - see the imports
            IdempotencyAlreadyInProgressError,
            IdempotencyInconsistentStateError,
            IdempotencyPersistenceLayerError,
            IdempotencyValidationError,
        )

        hashed = self._dedupe and identity.key.startswith(HASH_KEY_PREFIX)
        sent: list[SendResult] = []
        try:
            return self._once[hashed](channel=channel, request=request, key=identity, sent=sent, tally=tally)
        except IdempotencyValidationError:
            raise KeyReused(
                "this key was already used for a different message; use a new key for a new message",
                field=identity.field,
            ) from None
        except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
            raise SendInProgress("a message with this idempotency key is being sent; retry shortly") from None
        except IdempotencyPersistenceLayerError as exc:
            if isinstance(exc.__cause__, OutcomeUnknown):
                raise exc.__cause__ from None
            if sent:
                return self._complete_later(self._stores[hashed], identity, sent[0])
            logger.error("idempotency table unavailable", extra={"error": type(exc.__cause__).__name__})
            raise StoreUnavailable("the idempotency table is unavailable; retry later") from exc

    def _complete_later(
        self, store: BasePersistenceLayer, identity: SendKey, result: SendResult
    ) -> SendResult:
        """Customer.io accepted the send but its record could not be completed: the send stands (it is
        answered and acknowledged); the completion write alone is tried again."""
        logger.warning(
            "message sent; completing its idempotency record failed",
            extra={"delivery_id": result.delivery_id},
        )
        count("SendRecordRetried")
        from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import (  # noqa: PLC0415
            PydanticSerializer,
        )

        data = dataclasses.asdict(identity)
        for _ in range(RECORD_ATTEMPTS):
            try:
                store.save_success(data=data, result=PydanticSerializer(SendResult).to_dict(result))
            except Exception as exc:  # botocore errors: the send stands whatever the table says
                error = type(exc).__name__
                continue
            return result
        logger.error(
            "message sent; its idempotency record stays in progress",
            extra={"delivery_id": result.delivery_id, "error": error},
        )
        count("SendRecordFailed")
        return result

    def _send(
        self,
        *,
        channel: str,
        request: Transactional,
        key: SendKey | None,
        sent: list[SendResult],
        tally: list[str] | None,
    ) -> SendResult:
        """The send itself. `tally` (a queue batch) collects the channel instead of a log line and a
        metric per send."""
        try:
            result = self._cio.app.send(channel, request, retry_dropped=self._resend)
        except CustomerIOError as exc:
            if exc.ambiguous and not self._resend:
                raise OutcomeUnknown(f"outcome unknown: {exc.message}") from exc
            raise
        sent.append(result)
        if tally is None:
            logger.info("message sent", extra={"channel": channel, "delivery_id": result.delivery_id})
            count(f"{METRIC[channel]}Sent")
        else:
            tally.append(channel)
            logger.debug("message sent", extra={"channel": channel, "delivery_id": result.delivery_id})
        return result


def _replayed(response: Any, idempotent_data: DataRecord) -> Any:
    logger.info("duplicate message not sent again", extra={"status": idempotent_data.status})
    count("EmailDuplicate")
    return response.as_replay() if isinstance(response, SendResult) else response


_pools: dict[int, ThreadPoolExecutor] = {}


def executor(workers: int) -> ThreadPoolExecutor:
    """The container's send threads, made on the first batch that needs them and kept (a frozen
    Lambda container keeps them too)."""
    pool = _pools.get(workers)
    if pool is None:
        pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cio-relay-send")
    return pool


@lru_cache(maxsize=1)
def dynamodb_client() -> DynamoDBClient:
    # Short timeouts, bounded retries (an API caller waits); one connection per concurrent send.
    return clients.dynamodb(pool=max(10, get_settings().email_send_concurrency))


@lru_cache(maxsize=1)
def get_mailer() -> Mailer:
    """The container's Mailer; raises ConfigurationError when IDEMPOTENCY_TABLE is not set."""
    settings = get_settings()
    table = settings.require("idempotency_table")
    park = settings.email_on_ambiguous == "dead_letter"

    from cio_relay.send_records import SendRecords  # noqa: PLC0415 - see the imports

    def store() -> SendRecords:
        return SendRecords(table_name=table, boto3_client=dynamodb_client(), park_abandoned=park)

    return Mailer(settings, Queues(), get_customerio(), store(), store())


def deliver(records: list[SQSRecord], deadline: Deadline, *, context: LambdaContext) -> Outcomes:
    """EmailQueue records through the container's Mailer; a configuration error fails each record
    with its reason, so the delivery table backs them off instead of the invocation crashing."""
    try:
        mailer = get_mailer()
    except ConfigurationError as exc:
        return {record.message_id: exc for record in records}
    return mailer.deliver(records, deadline, context=context)


def reset() -> None:
    """Forget the per-container Mailer, DynamoDB client and send threads (tests)."""
    get_mailer.cache_clear()
    dynamodb_client.cache_clear()
    while _pools:
        _pools.popitem()[1].shutdown(wait=True)
