"""Soak under faults: events and emails through the local stack while Customer.io misbehaves.

`make test` runs a small soak (about 500 messages); `make soak` runs the full one (5,250) with the
same promises. Both wait on progress, not on the clock: the run lasts as long as messages keep
settling, and fails naming what is still pending once nothing has changed for a minute.

The local stack runs the real handlers behind its API Gateway and its Lambda-like SQS pollers, on a
moto server provisioned from template.yaml (redrive policies, batch sizes, visibility). The sandbox
Customer.io answers 20 % of requests with 429 (half with Retry-After), some with 5xx, some only
after the read timeout, drops some connections and slows some answers down. 1 % of the messages are
poison. The test asserts docs/design.md's promises and writes its figures to .cache/figures/.

About duplicates, honestly: a read timeout after the request left is ambiguous, so the relay sends
again (at-least-once). The sandbox, like Customer.io, has already accepted the first send, so an
email can reach Customer.io twice for one idempotency key, but only after a timeout. The test counts
those and asserts every duplicate follows a timeout for that same key; any other duplicate fails it.
Events may be delivered more than once too, always with the same messageId (Customer.io's dedup key).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest
from cio_relay.forwarding import MESSAGE_ID_NAMESPACE

from local_stack.customerio import Fault
from tests.reliability import write_figures
from tests.reliability.conftest import READ_TIMEOUT_SECONDS, Running
from tests.support import wait_for_progress

pytestmark = pytest.mark.slow

SEED = 20261130
MAX_RECEIVE_COUNT = "15"  # see test docstring of test_soak_under_faults
# One poller per queue here (Lambda runs several): a 1 s batching window instead of the default 2 s
# keeps EventsQueue draining as fast as the producers fill it.
TEMPLATE_PARAMETERS = {"MaxReceiveCount": MAX_RECEIVE_COUNT, "EventsBatchingWindowSeconds": "1"}
CHAOS_RATE = 0.30
# 10 of 15 kinds are 429 (half with Retry-After): 0.30 x 10/15 = 20 % of requests.
CHAOS_KINDS = ("429",) * 5 + ("429-retry-after",) * 5 + ("500", "503", "slow", "slow", "drop")
SLOW_TIMEOUT_SECONDS = 0.8  # a chaos "slow" answers after the read timeout (0.4 s): a read timeout
SLOW_ANSWER_SECONDS = 0.1  # the extra slow answers, within the read timeout
SLOW_ANSWER_EVERY = 12  # requests


@dataclass(frozen=True)
class Plan:
    """How many messages of each kind a soak sends."""

    name: str
    api_batches: int  # /v1/batch requests ...
    api_batch_size: int  # ... of this many calls
    api_single_calls: int  # identify/track/page/screen/group/alias, one call per request
    api_deletes: int  # DELETE /v1/customers/{id}: a "User Deleted" track call
    queue_calls: int  # single calls written straight onto EventsQueue (half carry their own messageId)
    queue_batches: int  # {"batch": [...]} bodies on EventsQueue ...
    queue_batch_size: int  # ... of this many calls
    api_emails: int  # POST /v1/send/email (most with an Idempotency-Key)
    queue_emails: int  # straight onto EmailQueue (most with an IdempotencyKey attribute)
    # Flow control: moto's SQS scans the whole queue on every call, so producers keep the backlog short.
    events_backlog: int = 120
    email_backlog: int = 40

    @property
    def planned(self) -> int:
        return (
            self.api_batches * self.api_batch_size
            + self.api_single_calls
            + self.api_deletes
            + self.queue_calls
            + self.queue_batches * self.queue_batch_size
            + self.api_emails
            + self.queue_emails
        )


FULL = Plan("full", 100, 25, 150, 50, 1_600, 100, 3, 150, 450)  # 5,200 valid + 50 poison (make soak)
SMALL = Plan("small", 8, 25, 30, 10, 150, 10, 3, 20, 60)  # 500 valid + 5 poison (make test)
CALL_KINDS = ("identify", "track", "page", "screen", "group", "alias")


def call(kind: str, sid: str, rng: random.Random) -> dict[str, Any]:
    """One Pipelines call tagged with its soak id (context.soak) so every delivery can be matched."""
    body: dict[str, Any] = {"type": kind, "userId": f"user-{rng.randrange(500)}", "context": {"soak": sid}}
    if kind == "track":
        body.update(event="order_completed", properties={"total": rng.randrange(10_000) / 100})
    elif kind == "identify":
        body["traits"] = {"plan": rng.choice(["free", "pro"]), "visits": rng.randrange(100)}
    elif kind in ("page", "screen"):
        body["name"] = rng.choice(["home", "pricing", "checkout"])
    elif kind == "group":
        body["groupId"] = f"account-{rng.randrange(50)}"
    else:
        body["previousId"] = f"anon-{sid}"
    return body


def email(sid: str, n: int) -> dict[str, Any]:
    return {
        "transactional_message_id": "order_receipt",
        "to": f"customer{n}@example.com",
        "identifiers": {"id": f"person-{n}"},
        "message_data": {"soak": sid, "order": n},
    }


@dataclass
class Ledger:
    """What was sent, and what each valid message should look like when it arrives."""

    event_ids: dict[str, str] = field(default_factory=dict)  # soak id -> expected messageId
    deletes: dict[str, str] = field(default_factory=dict)  # userId -> expected messageId
    email_ids: set[str] = field(default_factory=set)
    email_by_queue_message: dict[str, str] = field(default_factory=dict)  # SQS message id -> soak id
    api_answers: Counter[str] = field(default_factory=Counter)
    poison: dict[str, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def valid(self) -> int:
        return len(self.event_ids) + len(self.deletes) + len(self.email_ids)


# ---- producers -------------------------------------------------------------------------------


def produce_api_events(plan: Plan, running: Running, ledger: Ledger, rng: random.Random) -> None:
    jobs: list[tuple[str, str, Any, list[str]]] = []
    for b in range(plan.api_batches):
        sids = [f"api-b{b}-{i}" for i in range(plan.api_batch_size)]
        jobs.append(
            ("POST", "/v1/batch", {"batch": [call(rng.choice(CALL_KINDS), s, rng) for s in sids]}, sids)
        )
    for n in range(plan.api_single_calls):
        kind = CALL_KINDS[n % len(CALL_KINDS)]
        body = call(kind, f"api-{n}", rng)
        del body["type"]
        jobs.append(("POST", f"/v1/{kind}", body, [f"api-{n}"]))
    for n in range(plan.api_deletes):
        jobs.append(("DELETE", f"/v1/customers/deleted-{n}", None, [f"deleted-{n}"]))

    def post(job: tuple[str, str, Any, list[str]]) -> None:
        method, path, body, sids = job
        running.wait_for_room("EventsQueue", plan.events_backlog)
        answer = running.api(method, path, body)
        assert answer.status == 200, (path, answer.status, answer.data[:300])
        call_ids = answer.json()["call_ids"]
        assert len(call_ids) == len(sids)
        with ledger.lock:
            ledger.api_answers["events 200"] += 1
            for sid, message_id in zip(sids, call_ids, strict=True):
                if method == "DELETE":
                    ledger.deletes[sid] = message_id
                else:
                    ledger.event_ids[sid] = message_id

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, jobs))


def produce_queue_events(plan: Plan, running: Running, ledger: Ledger, rng: random.Random) -> None:
    entries: list[tuple[str, dict[str, str]]] = []
    plans: list[list[tuple[str, str | None]]] = []  # per message: (soak id, its own messageId or None)
    for n in range(plan.queue_calls):
        sid = f"q-{n}"
        body = call(rng.choice(CALL_KINDS), sid, rng)
        own = str(uuid.uuid4()) if n % 2 else None
        if own:
            body["messageId"] = own
        entries.append((json.dumps(body), {}))
        plans.append([(sid, own)])
    for b in range(plan.queue_batches):
        sids = [f"qb{b}-{i}" for i in range(plan.queue_batch_size)]
        body = {"batch": [call(rng.choice(CALL_KINDS), s, rng) for s in sids], "context": {"app": "soak"}}
        entries.append((json.dumps(body), {}))
        plans.append([(s, None) for s in sids])
    order = list(range(len(entries)))
    rng.shuffle(order)
    for start in range(0, len(order), 50):
        chunk = order[start : start + 50]
        running.wait_for_room("EventsQueue", plan.events_backlog)
        message_ids = running.send("EventsQueue", [entries[i] for i in chunk])
        with ledger.lock:
            for message_id, i in zip(message_ids, chunk, strict=True):
                for index, (sid, own) in enumerate(plans[i]):
                    # A call queued without a messageId gets one derived from its SQS message id.
                    ledger.event_ids[sid] = own or str(
                        uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{message_id}/{index}")
                    )


def produce_api_emails(plan: Plan, running: Running, ledger: Ledger) -> None:
    def post(n: int) -> None:
        sid = f"api-mail-{n}"
        running.wait_for_room("EmailQueue", plan.email_backlog)
        headers = {"Idempotency-Key": f"soak-key-{sid}"} if n % 5 else {}
        answer = running.api("POST", "/v1/send/email", email(sid, n), headers=headers)
        assert answer.status in (200, 202), (answer.status, answer.data[:300])
        with ledger.lock:
            ledger.email_ids.add(sid)
            ledger.api_answers[f"email {answer.status}"] += 1
            if answer.status == 202:
                ledger.email_by_queue_message[answer.json()["message_id"]] = sid

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(post, range(plan.api_emails)))


def produce_queue_emails(plan: Plan, running: Running, ledger: Ledger) -> None:
    entries: list[tuple[str, dict[str, str]]] = []
    sids = []
    for n in range(plan.queue_emails):
        sid = f"q-mail-{n}"
        attributes = {"IdempotencyKey": f"soak-key-{sid}"} if n % 4 else {}
        entries.append((json.dumps(email(sid, 10_000 + n)), attributes))
        sids.append(sid)
    for start in range(0, len(entries), 20):
        running.wait_for_room("EmailQueue", plan.email_backlog)
        message_ids = running.send("EmailQueue", entries[start : start + 20])
        with ledger.lock:
            for message_id, sid in zip(message_ids, sids[start : start + 20], strict=True):
                ledger.email_ids.add(sid)
                ledger.email_by_queue_message[message_id] = sid


def produce_poison(running: Running, ledger: Ledger, valid: int) -> None:
    """1 % poison: invalid JSON, invalid calls and oversized calls, straight onto the queues."""
    per_kind = max(1, round(valid * 0.01 / 5))
    events: list[tuple[str, str, str]] = []
    emails: list[tuple[str, str, str]] = []
    for n in range(per_kind):
        events.append(('{"type": "track", "userId": "u", "event": ', "400", "not valid JSON"))
        events.append((json.dumps({"type": "track", "userId": f"u-{n}"}), "400", "event: Field required"))
        huge = {"type": "identify", "userId": f"u-{n}", "traits": {"blob": "x" * 40_000}}
        events.append((json.dumps(huge), "413", "Customer.io takes at most 32768"))
        emails.append(("{not json", "400", "not valid JSON"))
        crowd = {**email(f"poison-{n}", n), "to": ", ".join(f"r{i}@example.com" for i in range(16))}
        emails.append((json.dumps(crowd), "400", "at most 15 recipients"))
    running.send("EventsQueue", [(body, {}) for body, _, _ in events])
    running.send("EmailQueue", [(body, {}) for body, _, _ in emails])
    ledger.poison["EventsDeadLetterQueue"] = events
    ledger.poison["EmailDeadLetterQueue"] = emails


# ---- what arrived ----------------------------------------------------------------------------


def event_deliveries(running: Running) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """soak id -> messageIds of its accepted deliveries; and the same for "User Deleted" by userId."""
    by_sid: dict[str, list[str]] = defaultdict(list)
    deletes: dict[str, list[str]] = defaultdict(list)
    for delivered in running.fake.pipelines_calls():
        sid = (delivered.get("context") or {}).get("soak")
        if sid is not None:
            by_sid[sid].append(delivered.get("messageId", ""))
        elif delivered.get("event") == "User Deleted":
            deletes[delivered["userId"]].append(delivered.get("messageId", ""))
    return by_sid, deletes


def email_deliveries(running: Running) -> Counter[Any]:
    return Counter((sent["json"].get("message_data") or {}).get("soak") for sent in running.fake.emails)


def pending(running: Running, ledger: Ledger) -> dict[str, Any]:
    """What has not settled yet: undelivered messages (a few ids), queue depths, missing dead letters."""
    events, deletes = event_deliveries(running)
    emails = email_deliveries(running)

    def some(missing: set[str]) -> str:
        return f"{len(missing)} (e.g. {', '.join(sorted(missing)[:3])})" if missing else ""

    state: dict[str, Any] = {
        "events not delivered": some(set(ledger.event_ids) - set(events)),
        "deletes not delivered": some(set(ledger.deletes) - set(deletes)),
        "emails not sent": some(ledger.email_ids - set(emails)),
    }
    for queue in ("EventsQueue", "EmailQueue"):
        visible, in_flight = running.depth(queue)
        state[f"{queue} (visible, in flight)"] = (visible, in_flight) if visible or in_flight else None
    for dlq, items in ledger.poison.items():
        held = sum(running.depth(dlq))
        state[f"{dlq} holds {held} of {len(items)} poison messages"] = held != len(items)
    return state


class SlowAnswers:
    """Every SLOW_ANSWER_EVERY-th request answers late, but within the read timeout.

    Queued faults go before chaos, so such a request is slow instead of (not as well as) faulted.
    """

    def __init__(self, running: Running) -> None:
        self._fake = running.fake
        self._stop = threading.Event()
        self._queued = 0
        self._thread = threading.Thread(target=self._run, name="slow-answers", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            due = self._fake.request_count // SLOW_ANSWER_EVERY
            if due > self._queued and self._fake.pending_faults("*") == 0:
                self._fake.fail("*", Fault.slow(SLOW_ANSWER_SECONDS))
                self._queued += 1

    def __enter__(self) -> SlowAnswers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def injected(self) -> int:
        return self._queued - self._fake.pending_faults("*")


def test_soak_under_faults(start_stack: Callable[..., AbstractContextManager[Running]]) -> None:
    """The small soak (make test). maxReceiveCount is 15 here (template default 10): at ~29 % failed
    requests, 10 failures in a row happen about once in 250,000 chains, 15 once in 130 million; the
    soak asserts that nothing valid is dead-lettered, so it must not depend on that luck. The outage
    test uses the default."""
    run_soak(SMALL, start_stack, Ledger())


@pytest.mark.soak
def test_full_soak_under_faults(start_stack: Callable[..., AbstractContextManager[Running]]) -> None:
    """The full soak (make soak): the same promises over 5,250 messages."""
    run_soak(FULL, start_stack, Ledger())


def run_soak(plan: Plan, start_stack: Callable[..., AbstractContextManager[Running]], ledger: Ledger) -> None:
    with start_stack(parameters=TEMPLATE_PARAMETERS) as running:
        # GIVEN the sandbox Customer.io failing 30 % of requests (20 % with 429) and slowing others
        running.fake.chaos(
            CHAOS_RATE, seed=SEED, kinds=CHAOS_KINDS, slow_delay=SLOW_TIMEOUT_SECONDS, retry_after="1"
        )
        started = time.monotonic()
        with SlowAnswers(running) as slow:
            # WHEN producers send events and emails, through the API and straight onto the queues
            with ThreadPoolExecutor(4, thread_name_prefix="producer") as pool:
                producers = [
                    pool.submit(produce_api_events, plan, running, ledger, random.Random(SEED + 1)),
                    pool.submit(produce_api_emails, plan, running, ledger),
                    pool.submit(produce_queue_events, plan, running, ledger, random.Random(SEED + 2)),
                    pool.submit(produce_queue_emails, plan, running, ledger),
                ]
                for producer in producers:
                    producer.result()  # re-raises a producer's failure (each waits on progress)
            assert ledger.valid == plan.planned, f"{ledger.valid} messages produced, {plan.planned} planned"
            produce_poison(running, ledger, ledger.valid)
            produced = time.monotonic()

            # ... and the pollers work until everything is delivered or dead-lettered
            wait_for_progress(lambda: pending(running, ledger), what=f"{plan.name} soak")
            finished = time.monotonic()
        running.fake.chaos(0)
        figures = soak_figures(plan, running, ledger, slow.injected, produced - started, finished - started)
        assert_promises_hold(running, ledger)
        write_figures(f"Soak under faults ({plan.name})", figures)


def timed_out_emails(running: Running, ledger: Ledger) -> Counter[str]:
    """Soak ids of emails whose send the relay saw time out (API deferrals and queue retries)."""
    timed_out: Counter[str] = Counter()
    for line in running.log.lines():
        is_timeout = line.get("reason") == "customerio_timeout" or line.get("status") == "customerio_timeout"
        sid = ledger.email_by_queue_message.get(str(line.get("message_id")))
        if is_timeout and sid is not None:
            timed_out[sid] += 1
    return timed_out


def assert_promises_hold(running: Running, ledger: Ledger) -> None:
    events, deletes = event_deliveries(running)
    # THEN every valid event arrived, every delivery of one call carrying the same messageId
    for sid, expected in ledger.event_ids.items():
        assert set(events[sid]) == {expected}, (sid, expected, events[sid])
    for user, expected in ledger.deletes.items():
        assert set(deletes[user]) == {expected}, (user, expected, deletes[user])
    # AND every valid email arrived; a second send for one key only ever follows a read timeout
    emails = email_deliveries(running)
    timed_out = timed_out_emails(running, ledger)
    for sid in ledger.email_ids:
        assert emails[sid] >= 1, f"email {sid} was never sent"
        assert emails[sid] - 1 <= timed_out[sid], (
            f"email {sid} sent {emails[sid]} times, {timed_out[sid]} timeouts"
        )
    assert set(emails) - {None} <= ledger.email_ids
    # AND each dead-letter queue holds exactly the poison messages, each with the right reason
    for dlq, poison in ledger.poison.items():
        dead = running.dead_letters(dlq)
        assert sorted(d["body"] for d in dead) == sorted(body for body, _, _ in poison)
        reasons = {body: (status, reason) for body, status, reason in poison}
        for message in dead:
            status, reason = reasons[message["body"]]
            assert message["attributes"]["FailureStatus"] == status
            assert reason in message["attributes"]["FailureReason"], message["attributes"]
    # AND nothing is left in flight
    for queue in ("EventsQueue", "EmailQueue"):
        assert running.depth(queue) == (0, 0)


def soak_figures(
    plan: Plan, running: Running, ledger: Ledger, slow_answers: int, produce_s: float, total_s: float
) -> list[str]:
    events, deletes = event_deliveries(running)
    emails = email_deliveries(running)
    faults = dict(running.fake.faults_injected)
    timeouts = faults.pop("slow", 0) - slow_answers
    runs = running.invocations.snapshot()
    by_function = Counter(r.function for r in runs)
    busy = {f: sum(r.busy for r in runs if r.function == f) for f in by_function}
    whole_failures = sum(1 for r in runs if r.error)
    retries = len(running.log.lines("record will be retried"))
    n_events = len(ledger.event_ids) + len(ledger.deletes)
    delivered_events = sum(1 for s in ledger.event_ids if events.get(s)) + sum(
        1 for u in ledger.deletes if deletes.get(u)
    )
    event_copies = sum(len(events.get(s, [])) for s in ledger.event_ids) + sum(
        len(deletes.get(u, [])) for u in ledger.deletes
    )
    delivered_emails = sum(1 for s in ledger.email_ids if emails[s])
    duplicate_emails = sum(emails[s] - 1 for s in ledger.email_ids if emails[s] > 1)
    timed_out = sum(timed_out_emails(running, ledger).values())
    poison = sum(len(p) for p in ledger.poison.values())
    total = ledger.valid + poison
    dead = {dlq: sum(running.depth(dlq)) for dlq in ledger.poison}
    in_flight = sum(sum(running.depth(q)) for q in ("EventsQueue", "EmailQueue"))
    lost = n_events - delivered_events + len(ledger.email_ids) - delivered_emails
    answers = ledger.api_answers
    options = running.stack.options
    return [
        f"- messages: {total:,} ({n_events:,} events, {len(ledger.email_ids):,} emails, "
        f"{poison} poison = {poison / total:.1%}); through the API: {plan.api_batches} /v1/batch "
        f"requests of {plan.api_batch_size}, {plan.api_single_calls} single calls, {plan.api_deletes} "
        f"deletes, {plan.api_emails} emails "
        f"({answers['email 200']} sent at once, {answers['email 202']} deferred with 202); the rest "
        "straight onto the queues",
        f"- Customer.io requests: {running.fake.request_count:,}; faults injected: "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(faults.items()))
        + f", read timeouts (answer after {SLOW_TIMEOUT_SECONDS:g} s > {READ_TIMEOUT_SECONDS:g} s) "
        f"{timeouts}, slow answers within the timeout {slow_answers}",
        f"- SQS invocations: {len(runs):,} ({by_function['EventsFunction']:,} events, "
        f"{by_function['EmailFunction']:,} email), {whole_failures} failed as a whole (every record "
        f"failed: BatchProcessingError); record retries (backoff via visibility): {retries:,}",
        f"- delivered: {delivered_events:,}/{n_events:,} events ({event_copies - delivered_events} repeat "
        f"deliveries, each with its call's messageId), {delivered_emails:,}/{len(ledger.email_ids):,} emails",
        f"- dead-lettered: {dead.get('EventsDeadLetterQueue', 0)} events + "
        f"{dead.get('EmailDeadLetterQueue', 0)} emails = {sum(dead.values())}: exactly the poison "
        "messages, each with its FailureReason/FailureStatus",
        f"- lost: {lost}; left in flight: {in_flight}",
        f"- duplicate emails: {duplicate_emails} (at-least-once: {timed_out} sends hit the read timeout "
        "after Customer.io had the request; every duplicate belongs to one of those keys)",
        f"- wall time: {total_s:.0f} s ({produce_s:.0f} s producing; handlers busy "
        f"{busy.get('EventsFunction', 0):.0f} s events queue, {busy.get('EmailFunction', 0):.0f} s email "
        f"queue, {running.invocations.api_busy:.0f} s API); retries {options.retry_base:g}-"
        f"{options.retry_cap:g} s, maxReceiveCount {MAX_RECEIVE_COUNT}, read timeout "
        f"{READ_TIMEOUT_SECONDS:g} s",
    ]
