"""Events logic: accept calls onto EventsQueue, and deliver queued records to Pipelines or Track."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from cio_relay.cio import CustomerIO, get_customerio
from cio_relay.cio.backend import EventsBackend, Item
from cio_relay.cio.pipelines import BATCH_ENVELOPE_BYTES, encode, pack
from cio_relay.delivery import Deadline, Outcomes, source_message_id
from cio_relay.errors import (
    CioRelayError,
    Classification,
    EnqueueFailed,
    InvalidRequest,
    NotAttempted,
    PartlyRefused,
    PayloadTooLarge,
    Permanent,
)
from cio_relay.limits import check_limits
from cio_relay.models import invalid_request
from cio_relay.models.pipelines import MAX_BATCH_BYTES, MAX_CALL_BYTES, Batch, Call, Queued, wire_of
from cio_relay.observability import count, logger
from cio_relay.queues import PartlyQueued, Queues
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
# Queue messages written without a messageId get one derived from the SQS message id (of the first
# message of its line: copies carry it as SourceMessageId), so every redelivery, dead-letter copy and
# redrive of that message carries the same messageId.
MESSAGE_ID_NAMESPACE = uuid.UUID("8b0c1f0e-6c4f-4a53-9d53-6f8f2b0c1e01")
_NAMESPACE_SHA1 = hashlib.sha1(MESSAGE_ID_NAMESPACE.bytes, usedforsecurity=False)
_CALL = TypeAdapter[Any](Call)
# The 17th hex digit of a UUID with its top two bits set to the RFC 4122 variant (0b10).
_RFC4122_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def derived_message_id(sqs_message_id: str, index: int) -> str:
    """str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{sqs_message_id}/{index}")), without building UUID objects.

    Same value as uuid5 (RFC 4122 version 5); about a tenth of the handler's CPU on a 100-record batch
    went into uuid.uuid5 itself.
    """
    sha1 = _NAMESPACE_SHA1.copy()
    sha1.update(f"{sqs_message_id}/{index}".encode())
    h = sha1.hexdigest()  # the first 32 hex digits, with the version and variant set in the text
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_RFC4122_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


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


class _NonFinite(Exception):
    """The JSON holds NaN or Infinity (json.loads accepts them; validation turns them into null)."""


def _non_finite(name: str) -> float:
    raise _NonFinite(name)


_FINITE_JSON = json.JSONDecoder(parse_constant=_non_finite)


def _load(body: str) -> tuple[Any, bool]:
    """(the JSON value, whether it is free of NaN and Infinity); InvalidRequest if it is not JSON."""
    try:
        try:
            return _FINITE_JSON.decode(body), True
        except _NonFinite:
            return json.loads(body), False
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        raise InvalidRequest("message body is not valid JSON", field="body") from None


def parse_queue_body(record: SQSRecord) -> list[dict[str, Any]]:
    """An EventsQueue body: one call with its `type`, or `{"batch": [...]}`. Raises InvalidRequest."""
    return parse_queue_message(record)[0]


def parse_queue_message(record: SQSRecord) -> tuple[list[dict[str, Any]], bool]:
    """The calls of an EventsQueue message, and whether it was a `{"batch": [...]}`.

    Every call leaves with a messageId and a timestamp: a call without one gets one derived from the
    SQS message id, and the message's SentTimestamp — the same on every receive of that message.
    """
    calls, batch, _ = _parse(record)
    return calls, batch


def _parse(record: SQSRecord) -> tuple[list[dict[str, Any]], bool, str | None]:
    """parse_queue_message, and the single call's JSON text when it can go to Customer.io as it came.

    That text is the body itself (with the messageId and timestamp the call was given added at its
    end) when validation changed nothing in the call and the body is plain (no \\u escape, so no lone
    surrogate, and no NaN or Infinity): forwarding it spares encoding the call again, the largest
    per-record cost after validation. None otherwise, and for a `{"batch": [...]}` body.
    """
    body = record.body or ""
    # A body without escapes or NaN/Infinity (nearly all) is read by pydantic-core's parser, which
    # gives what json.loads gives in a third of the time; anything else, or anything it refuses, by
    # json (its errors, lone surrogates and non-finite numbers are handled below as they always were).
    plain = "\\u" not in body and "NaN" not in body and "Infinity" not in body
    if plain:
        try:
            data, finite = from_json(body), True
        except ValueError:
            plain = False
    if not plain:
        data, finite = _load(body)
    if not isinstance(data, dict):
        raise InvalidRequest("message body must be a JSON object", field="body")
    batch = "batch" in data
    text: str | None = None
    try:
        if batch:
            calls = Batch.model_validate(data).calls()
        else:
            call = _CALL.validator.validate_python(data)  # the validator itself: once per record
            wire = wire_of(call, data) if finite else call.wire()
            calls = [wire]
            if wire is data and plain:
                text = body
    except ValidationError as exc:
        raise invalid_request(exc) from None
    sent_at: str | None = ""  # read when a call needs it: most calls carry their own time
    lineage = ""  # a dead-letter or re-enqueued copy names its first message; read when needed
    for index, call in enumerate(calls):
        if call.get("messageId") is None:  # absent or null: Customer.io needs one on every call
            lineage = lineage or source_message_id(record)
            text = _with_field(text, call, "messageId", derived_message_id(lineage, index))
        if call.get("timestamp") is None:
            sent_at = sent_time(record) if sent_at == "" else sent_at
            if sent_at is not None:
                text = _with_field(text, call, "timestamp", sent_at)
    return calls, batch, text


def _with_field(text: str | None, call: dict[str, Any], key: str, value: str) -> str | None:
    """Set call[key] = value, and return `text` (the call's JSON object) with `"key":"value"` added at
    its end: None when there is no text or the key was there (as null: it would be a duplicate).
    `value` needs no escaping: it is an id or a time the relay made."""
    there = key in call
    call[key] = value
    if text is None or there:
        return None
    return f'{text.rstrip()[:-1]},"{key}":"{value}"}}'


def iso_time(epoch_ms: int) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-12-01T09:30:00.123Z."""
    when = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sent_time(record: SQSRecord) -> str | None:
    """When SQS received the message (its SentTimestamp), the event time of a call that has none."""
    sent = (record.raw_event.get("attributes") or {}).get("SentTimestamp")
    return iso_time(int(sent)) if isinstance(sent, str) and sent.isdigit() else None


class _Record:
    """A queue message being delivered: its calls, their backend items and one result per call.

    (A plain class with slots: one is made for every record of every batch.)"""

    __slots__ = ("batch", "calls", "items", "record_id", "results")

    def __init__(self, record_id: str, calls: list[dict[str, Any]], batch: bool) -> None:
        self.record_id, self.calls, self.batch = record_id, calls, batch
        self.items: list[Item | None] = []
        self.results: list[BaseException | None] = []

    def outcome(self) -> BaseException | None:
        """Delivered (None); retry (the first retryable error: the whole message comes back); or
        permanent: the message when every call was refused, else only its refused calls."""
        if not any(self.results):  # errors are truthy: every call delivered
            return None
        failures = [(i, r) for i, r in enumerate(self.results) if r is not None]
        retry = next((r for _, r in failures if not _permanent(r)), None)
        if retry is not None:
            return retry
        if len(failures) == len(self.results):
            return failures[0][1]
        reasons = "; ".join(str(r) for _, r in failures)
        first = failures[0][1]
        status = getattr(first, "status", None)
        body = encode({"batch": [self.calls[i] for i, _ in failures]}).decode()
        return PartlyRefused(
            f"{len(failures)} of {len(self.results)} calls refused (the rest delivered; the dead-letter "
            f"copy holds only the refused ones): {reasons}",
            status=status if isinstance(status, int) else None,
            dead_letter_body=body,
        )


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, CioRelayError) and exc.classification is Classification.PERMANENT


def _located(exc: InvalidRequest, prefix: str) -> InvalidRequest:
    """The same error naming its field within the message (e.g. `batch.3.event`; `body` for the call)."""
    field_name = f"{prefix}{exc.field}" if exc.field else prefix.rstrip(".") or "body"
    return type(exc)(exc.reason, field=field_name)


_Slot = tuple[_Record, int, bytes]


class Forwarder:
    """Accept (validate -> enqueue) and deliver (records -> Pipelines /v1/batch or Track /api/v2/batch)."""

    def __init__(self, settings: Settings, queues: Queues, customerio: CustomerIO) -> None:
        self._settings = settings
        self._queues = queues
        self._cio = customerio

    # ---- API side -------------------------------------------------------------------------
    def accept(self, calls: Sequence[dict[str, Any]], *, batch: bool = False) -> Queued:
        """Check and enqueue calls; each keeps (or gets) a messageId and a timestamp (the accept time)
        that survive every retry.

        Raises InvalidRequest / PayloadTooLarge before anything is queued, EnqueueFailed if SQS refused
        (after sending refused entries again), naming the calls that were queued.
        """
        queue_url = self._settings.require("events_queue_url")
        accepted_at = iso_time(time.time_ns() // 1_000_000)
        bodies: list[str] = []
        call_ids: list[str] = []
        total = 0
        for index, call in enumerate(calls):
            where = f"batch.{index}" if batch else "body"
            if call.get("messageId") is None:  # absent or null ("messageId": null is valid JSON)
                call["messageId"] = str(uuid.uuid4())
            if call.get("timestamp") is None:  # Customer.io would stamp its arrival, hours late in an outage
                call["timestamp"] = accepted_at
            check_conventions(call, self._settings.event_name_policy, f"{where}.event" if batch else "event")
            encoded = encode_checked(call, where)
            check_limits(call, self._settings.limits_policy, f"{where}." if batch else "")
            total += len(encoded) + 1
            bodies.append(encoded.decode())
            call_ids.append(call["messageId"])
        if total > MAX_BATCH_BYTES:
            raise PayloadTooLarge(
                f"batch is {total} bytes; Customer.io takes at most {MAX_BATCH_BYTES}", field="batch"
            )
        try:
            ids = self._queues.send_many(queue_url, bodies)
        except PartlyQueued as exc:
            raise _partly_queued(call_ids, exc.queued) from exc
        count("Accepted", len(ids))
        logger.info("calls queued", extra={"calls": len(ids)})
        return Queued(message_ids=ids, call_ids=call_ids)

    # ---- SQS side -------------------------------------------------------------------------
    def deliver(self, records: list[SQSRecord], deadline: Deadline) -> Outcomes:
        """Send every valid call, packed into as few batch requests as the backend's limits allow.

        Each call has its own result: a call the backend refused is dead-lettered on its own (the
        message's other calls count as delivered), and a packed request refused as a whole (400) is
        sent again call by call — only the calls it held.
        """
        outcomes: dict[str, BaseException | None] = {}
        pending: list[_Record] = []
        try:
            backend: EventsBackend | None = self._cio.events_backend()
            unusable: CioRelayError | None = None
        except CioRelayError as exc:  # no usable credential, or the secret cannot be read: retried
            backend, unusable = None, exc
        # Big batches make several requests: with EVENTS_SEND_CONCURRENCY > 1 each request is started as
        # soon as it is full, up to that many in flight, while the rest of the batch is still parsed.
        workers = self._settings.events_send_concurrency
        packer = _Packer(self, backend, deadline, workers) if backend is not None and workers > 1 else None
        # logger.set_correlation_id(message_id) for each record, without looking the formatter up each time.
        log_keys = logger.registered_formatter
        for record in records:
            message_id = record.message_id
            log_keys.append_keys(correlation_id=message_id)
            try:
                calls, batch, text = _parse(record)
            except InvalidRequest as exc:  # refused whatever the backend: a bad message stays bad
                outcomes[message_id] = exc
                continue
            if backend is None:
                outcomes[message_id] = unusable
                continue
            item = _Record(message_id, calls, batch)
            self._prepare(item, backend, text)
            pending.append(item)
            if packer is not None:
                packer.add(item)
        logger.set_correlation_id(None)
        if backend is None:
            return outcomes
        if packer is None:
            self._send(pending, backend, deadline)
        elif packer.finish():
            self._send_alone(packer.alone, backend, deadline)
        for item in pending:
            outcomes[item.record_id] = item.outcome()
        count("Forwarded", sum(1 for o in outcomes.values() if o is None))
        return outcomes

    def _prepare(self, record: _Record, backend: EventsBackend, text: str | None = None) -> None:
        """Each call's backend item, or why it is refused; `text` is a single call's JSON as it came."""
        names, limits = self._settings.event_name_policy, self._settings.limits_policy
        batch = record.batch
        for index, call in enumerate(record.calls):
            prefix = f"batch.{index}." if batch else ""  # where the call is, in a field's name
            try:
                check_conventions(call, names, f"{prefix}event" if prefix else "event")
                item = backend.item(call, text)
                check_limits(call, limits, prefix)
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") parses as JSON but is not UTF-8
                item = None
                error = InvalidRequest("text must be valid Unicode (no lone surrogates)", field=None)
            except InvalidRequest as exc:
                item, error = None, exc
            record.items.append(item)
            record.results.append(_NOT_SENT if item is not None else _located(error, prefix))

    def _send(self, pending: list[_Record], backend: EventsBackend, deadline: Deadline) -> None:
        packed: list[_Slot] = []
        alone: list[tuple[_Record, int, Item]] = []
        for record in pending:
            for index, item in enumerate(record.items):
                if item is not None and item.alone is None:
                    packed.append((record, index, item.body))
                elif item is not None:
                    alone.append((record, index, item))
        for group in pack([body for _, _, body in packed], max_request_bytes=backend.max_request_bytes):
            if not self._send_group([packed[i] for i in group], backend, deadline):
                return
        self._send_alone(alone, backend, deadline)

    def _send_group(self, slots: list[_Slot], backend: EventsBackend, deadline: Deadline) -> bool:
        """One packed request, and each call's result; False when time ran out before it was sent."""
        if not deadline.allows_request():
            return False
        try:
            refused = backend.send_batch([body for _, _, body in slots])
        except Permanent as exc:
            if len(slots) == 1:
                _set(slots, exc)
                return True
            # One bad call must not poison the others: send the calls this request held, one by one.
            logger.warning("batch refused; sending its calls one by one", extra={"calls": len(slots)})
            return self._one_by_one(slots, backend, deadline)
        except CioRelayError as exc:  # Customer.io errors, and a secret that cannot be read
            _set(slots, exc)
            return True
        for position, (record, index, _) in enumerate(slots):
            record.results[index] = refused.get(position)
        return True

    def _send_alone(
        self, alone: list[tuple[_Record, int, Item]], backend: EventsBackend, deadline: Deadline
    ) -> None:
        for record, index, item in alone:
            if not deadline.allows_request():
                return
            try:
                backend.send_alone(str(item.alone), item.body)
                record.results[index] = None
            except CioRelayError as exc:
                record.results[index] = exc

    def _one_by_one(self, slots: list[_Slot], backend: EventsBackend, deadline: Deadline) -> bool:
        """False when time ran out (the calls not sent stay unattempted)."""
        for record, index, body in slots:
            if not deadline.allows_request():
                return False
            try:
                record.results[index] = backend.send_batch([body]).get(0)
            except CioRelayError as exc:
                record.results[index] = exc
        return True


class _Packer:
    """Packs calls into batch requests as their records are prepared (as `pack` does) and starts each
    request once it is full, on the container's request threads: Customer.io answers the first ones
    while the rest of a big batch is still being parsed. Each request is started only with its
    timeouts to spare, as a lone request is (`_send_group`)."""

    def __init__(
        self, forwarder: Forwarder, backend: EventsBackend, deadline: Deadline, workers: int
    ) -> None:
        self._forwarder, self._backend, self._deadline = forwarder, backend, deadline
        self._executor = _executor(workers)
        self._limit = backend.max_request_bytes
        self._group: list[_Slot] = []
        self._size = BATCH_ENVELOPE_BYTES
        self._started: list[Future[bool]] = []
        self.alone: list[tuple[_Record, int, Item]] = []

    def add(self, record: _Record) -> None:
        for index, item in enumerate(record.items):
            if item is None:
                continue
            if item.alone is not None:
                self.alone.append((record, index, item))
                continue
            if len(item.body) > MAX_CALL_BYTES:  # as `pack`: the backend checked it already
                raise PayloadTooLarge(f"call is {len(item.body)} bytes; the limit is {MAX_CALL_BYTES}")
            extra = len(item.body) + (1 if self._group else 0)
            if self._group and self._size + extra > self._limit:
                self._start()
                extra = len(item.body)
            self._group.append((record, index, item.body))
            self._size += extra

    def _start(self) -> None:
        group, self._group, self._size = self._group, [], BATCH_ENVELOPE_BYTES
        self._started.append(
            self._executor.submit(self._forwarder._send_group, group, self._backend, self._deadline)
        )

    def finish(self) -> bool:
        """Send the last request and wait for all; False when time ran out before one was sent.

        A batch that fits in one request (the usual case below ~2,500 calls) sends it on this thread:
        handing it to a request thread would only add the hand-over to its wait.
        """
        if self._group and not self._started:
            group, self._group = self._group, []
            return self._forwarder._send_group(group, self._backend, self._deadline)
        if self._group:
            self._start()
        in_time = [started.result() for started in self._started]  # every one, before any outcome is read
        return all(in_time)


def _set(slots: list[_Slot], exc: BaseException) -> None:
    for record, index, _ in slots:
        record.results[index] = exc


_NOT_SENT = NotAttempted("not attempted in this invocation")


def _partly_queued(call_ids: list[str], queued: Sequence[int]) -> EnqueueFailed:
    """503 naming what SQS stored. A call sent again with the same messageId is the same call."""
    stored = [call_ids[i] for i in queued]
    if not stored:
        return EnqueueFailed("the calls could not be queued; nothing was stored, try again")
    return EnqueueFailed(
        f"{len(stored)} of {len(call_ids)} calls were queued (queued_call_ids); send the others "
        "(not_queued) again, or the whole request with the same messageIds",
        queued_call_ids=stored,
        not_queued=sorted(set(range(len(call_ids))) - set(queued)),
    )


@lru_cache(maxsize=2)
def _executor(workers: int) -> ThreadPoolExecutor:
    """The container's request threads, made on the first batch that needs them and kept."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cio-relay-events")


@lru_cache(maxsize=1)
def get_forwarder() -> Forwarder:
    return Forwarder(get_settings(), Queues(), get_customerio())
