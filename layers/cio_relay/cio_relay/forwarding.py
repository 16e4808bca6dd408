"""Events logic: accept calls onto EventsQueue, and deliver queued records to the Pipelines API."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import TypeAdapter, ValidationError

from cio_relay.cio import CustomerIO, get_customerio
from cio_relay.cio.pipelines import encode, pack
from cio_relay.delivery import Deadline, Outcomes
from cio_relay.errors import CioRelayError, InvalidRequest, NotAttempted, PayloadTooLarge, Permanent
from cio_relay.models import invalid_request
from cio_relay.models.pipelines import MAX_BATCH_BYTES, MAX_CALL_BYTES, Batch, Call, Queued
from cio_relay.observability import count, logger
from cio_relay.queues import Queues
from cio_relay.settings import Settings, get_settings

SNAKE_CASE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
EMAIL_SHAPED = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SEMANTIC_EVENTS = frozenset(
    {
        "Device Created or Updated",
        "Device Deleted",
        "User Deleted",
        "User Suppressed",
        "User Unsuppressed",
        "Relationship Deleted",
        "Object Deleted",
        "Report Delivery Event",
        "Report Content Event",
    }
)
# Queue messages written without a messageId get one derived from the SQS message id, so every
# redelivery of that message carries the same messageId.
MESSAGE_ID_NAMESPACE = uuid.UUID("8b0c1f0e-6c4f-4a53-9d53-6f8f2b0c1e01")
_NAMESPACE_BYTES = MESSAGE_ID_NAMESPACE.bytes
_CALL = TypeAdapter[Any](Call)


def derived_message_id(sqs_message_id: str, index: int) -> str:
    """str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{sqs_message_id}/{index}")), without building UUID objects.

    Same value as uuid5 (RFC 4122 version 5); about a tenth of the handler's CPU on a 100-record batch
    went into uuid.uuid5 itself.
    """
    name = f"{sqs_message_id}/{index}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_conventions(call: dict[str, Any], policy: str, field_name: str = "event") -> None:
    """Customer.io's guidelines: snake_case event names (semantic events exempt), userId not an email."""
    name = call.get("event")
    unconventional = (
        call.get("type") == "track"
        and isinstance(name, str)
        and name not in SEMANTIC_EVENTS
        and not SNAKE_CASE.match(name)
    )
    if unconventional and policy == "reject":
        raise InvalidRequest("event names must be snake_case (EVENT_NAME_POLICY=reject)", field=field_name)
    if unconventional and policy == "warn":
        logger.warning("event name is not snake_case", extra={"event_name": str(name)[:100]})
        count("EventNameNotSnakeCase")
    user_id = call.get("userId")
    if isinstance(user_id, str) and "@" in user_id and EMAIL_SHAPED.match(user_id):
        logger.warning("userId looks like an email address; use a stable id instead")
        count("EmailShapedUserId")


def encode_checked(call: dict[str, Any], field_name: str) -> bytes:
    try:
        encoded = encode(call)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") parses as JSON but is not UTF-8
        raise InvalidRequest("text must be valid Unicode (no lone surrogates)", field=field_name) from None
    if len(encoded) > MAX_CALL_BYTES:
        raise PayloadTooLarge(
            f"call is {len(encoded)} bytes; Customer.io takes at most {MAX_CALL_BYTES}", field=field_name
        )
    return encoded


def parse_queue_body(record: SQSRecord) -> list[dict[str, Any]]:
    """An EventsQueue body: one call with its `type`, or `{"batch": [...]}`. Raises InvalidRequest."""
    try:
        data = json.loads(record.body or "")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        raise InvalidRequest("message body is not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("message body must be a JSON object", field="body")
    try:
        if "batch" in data:
            calls = Batch.model_validate(data).calls()
        else:
            calls = [_CALL.validator.validate_python(data).wire()]  # the validator itself: once per record
    except ValidationError as exc:
        raise invalid_request(exc) from None
    for index, call in enumerate(calls):
        if call.get("messageId") is None:  # absent or null: Customer.io needs one on every call
            call["messageId"] = derived_message_id(record.message_id, index)
    return calls


@dataclass
class _Pending:
    record_id: str
    calls: list[bytes] = field(default_factory=list)


class Forwarder:
    """Accept (validate -> enqueue) and deliver (records -> Pipelines /v1/batch)."""

    def __init__(self, settings: Settings, queues: Queues, customerio: CustomerIO) -> None:
        self._settings = settings
        self._queues = queues
        self._cio = customerio

    # ---- API side -------------------------------------------------------------------------
    def accept(self, calls: Sequence[dict[str, Any]], *, batch: bool = False) -> Queued:
        """Check and enqueue calls; each keeps (or gets) a messageId that survives every retry.

        Raises InvalidRequest / PayloadTooLarge before anything is queued, EnqueueFailed if SQS refused.
        """
        queue_url = self._settings.require("events_queue_url")
        bodies: list[str] = []
        call_ids: list[str] = []
        total = 0
        for index, call in enumerate(calls):
            where = f"batch.{index}" if batch else "body"
            if call.get("messageId") is None:  # absent or null ("messageId": null is valid JSON)
                call["messageId"] = str(uuid.uuid4())
            check_conventions(call, self._settings.event_name_policy, f"{where}.event" if batch else "event")
            encoded = encode_checked(call, where)
            total += len(encoded) + 1
            bodies.append(encoded.decode())
            call_ids.append(call["messageId"])
        if total > MAX_BATCH_BYTES:
            raise PayloadTooLarge(
                f"batch is {total} bytes; Customer.io takes at most {MAX_BATCH_BYTES}", field="batch"
            )
        ids = self._queues.send_many(queue_url, bodies)
        count("Accepted", len(ids))
        logger.info("calls queued", extra={"calls": len(ids)})
        return Queued(message_ids=ids, call_ids=call_ids)

    # ---- SQS side -------------------------------------------------------------------------
    def deliver(self, records: list[SQSRecord], deadline: Deadline) -> Outcomes:
        """Send every valid record, packed into as few /v1/batch requests as the limits allow."""
        outcomes: dict[str, BaseException | None] = {}
        pending: list[_Pending] = []
        policy = self._settings.event_name_policy
        # logger.set_correlation_id(message_id) for each record, without looking the formatter up each time.
        log_keys = logger.registered_formatter
        for record in records:
            message_id = record.message_id
            log_keys.append_keys(correlation_id=message_id)
            try:
                calls = parse_queue_body(record)
                for call in calls:
                    check_conventions(call, policy)
                pending.append(_Pending(message_id, [encode_checked(c, "body") for c in calls]))
            except InvalidRequest as exc:
                outcomes[message_id] = exc
        logger.set_correlation_id(None)
        self._send_packed(pending, outcomes, deadline)
        count("Forwarded", sum(1 for o in outcomes.values() if o is None))
        return outcomes

    def _send_packed(
        self, pending: list[_Pending], outcomes: dict[str, BaseException | None], deadline: Deadline
    ) -> None:
        flat = [(item, call) for item in pending for call in item.calls]
        groups = list(pack([call for _, call in flat]))
        sent: dict[int, BaseException | None] = {}  # group index -> outcome (absent: not attempted)
        alone: set[str] = set()  # records of a rejected batch, each sent on its own instead
        for index, group in enumerate(groups):
            if not deadline.allows_request():
                break
            owners = list(dict.fromkeys(flat[i][0].record_id for i in group))
            try:
                self._cio.pipelines.batch_encoded([flat[i][1] for i in group])
                sent[index] = None
            except Permanent as exc:
                if len(owners) == 1:
                    sent[index] = exc
                    continue
                # One bad record must not poison the others: send each record on its own.
                logger.warning(
                    "batch rejected; sending its records one by one", extra={"records": len(owners)}
                )
                alone.update(owners)
                self._one_by_one([p for p in pending if p.record_id in owners], outcomes, deadline)
                sent[index] = None
            except CioRelayError as exc:  # Customer.io errors, and a secret that cannot be read
                sent[index] = exc
        groups_of: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            for i in group:
                groups_of.setdefault(flat[i][0].record_id, []).append(index)
        for item in pending:
            if item.record_id in alone:
                continue  # decided (or left unattempted) by _one_by_one
            results = [sent.get(g, _NOT_SENT) for g in groups_of[item.record_id]]
            failure = next((r for r in results if r is not None and r is not _NOT_SENT), None)
            if failure is not None:
                outcomes[item.record_id] = failure
            elif _NOT_SENT not in results:
                outcomes[item.record_id] = None

    def _one_by_one(
        self, pending: list[_Pending], outcomes: dict[str, BaseException | None], deadline: Deadline
    ) -> None:
        for item in pending:
            if item.record_id in outcomes:
                continue
            try:
                for group in pack(item.calls):
                    if not deadline.allows_request():
                        return
                    self._cio.pipelines.batch_encoded([item.calls[i] for i in group])
                outcomes[item.record_id] = None
            except CioRelayError as exc:
                outcomes[item.record_id] = exc


_NOT_SENT = NotAttempted("not attempted in this invocation")


@lru_cache(maxsize=1)
def get_forwarder() -> Forwarder:
    return Forwarder(get_settings(), Queues(), get_customerio())
