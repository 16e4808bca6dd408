"""Customer.io fully down for a while, then back: nothing is lost and nothing is dead-lettered early.

While the sandbox answers 503 to everything, every invocation fails as a whole (the handler raises
BatchProcessingError when every record failed, which is what makes Lambda slow its polling), each
record comes back after its backoff, and emails posted to the API are deferred (202). Once Customer.io
is back, everything is delivered. maxReceiveCount is the template's default here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from local_stack.template import Template
from tests.reliability import write_figures
from tests.reliability.conftest import Running
from tests.support import ROOT, wait_for_progress

pytestmark = pytest.mark.slow

# Down until every message has been retried a few times: at least this long, and until some record
# has been received OUTAGE_RECEIVES times (well under the template's maxReceiveCount).
OUTAGE_MIN_SECONDS = 4
OUTAGE_RECEIVES = 3
QUEUE_EVENTS, API_EVENTS, QUEUE_EMAILS, API_EMAILS = 200, 50, 30, 10
RETRY_CAP_SECONDS = "3"  # spreads the retries of a long outage a little more than the soak's 2 s


def template_max_receive_count() -> int:
    return int(Template(ROOT / "template.yaml").parameters["MaxReceiveCount"]["Default"])


def enqueue_everything(running: Running) -> tuple[set[str], set[str]]:
    """Events and emails, through the API and straight onto the queues; returns their soak ids."""
    events = {f"e-{n}" for n in range(QUEUE_EVENTS + API_EVENTS)}
    emails = {f"m-{n}" for n in range(QUEUE_EMAILS + API_EMAILS)}
    calls = [
        {"type": "track", "userId": f"u-{n}", "event": "signed_up", "context": {"soak": f"e-{n}"}}
        for n in range(QUEUE_EVENTS)
    ]
    running.send("EventsQueue", [(json.dumps(c), {}) for c in calls])
    batch = [
        {"type": "identify", "userId": f"u-{n}", "context": {"soak": f"e-{n}"}}
        for n in range(QUEUE_EVENTS, QUEUE_EVENTS + API_EVENTS)
    ]
    answer = running.api("POST", "/v1/batch", {"batch": batch})
    assert answer.status == 200, answer.data
    bodies = [
        {
            "transactional_message_id": 7,
            "to": f"p{n}@example.com",
            "identifiers": {"id": f"p{n}"},
            "message_data": {"soak": f"m-{n}"},
        }
        for n in range(QUEUE_EMAILS + API_EMAILS)
    ]
    running.send(
        "EmailQueue",
        [(json.dumps(b), {"IdempotencyKey": f"k-{n}"}) for n, b in enumerate(bodies[:QUEUE_EMAILS])],
    )
    for n, body in enumerate(bodies[QUEUE_EMAILS:], start=QUEUE_EMAILS):
        answer = running.api("POST", "/v1/send/email", body, headers={"Idempotency-Key": f"k-{n}"})
        # a caller is told the email is queued, never an error, while Customer.io is down
        assert answer.status == 202, answer.data
        assert answer.json()["status"] == "queued"
    return events, emails


def test_customerio_outage_then_recovery(start_stack: Callable[..., AbstractContextManager[Running]]) -> None:
    max_receive_count = template_max_receive_count()
    with start_stack(
        parameters={"EventsBatchingWindowSeconds": "1"}, env={"RETRY_CAP_SECONDS": RETRY_CAP_SECONDS}
    ) as running:
        # GIVEN Customer.io answering 503 to everything
        running.fake.outage(True)
        down = time.monotonic()

        # WHEN events and emails arrive, and the pollers work through the outage
        events, emails = enqueue_everything(running)
        time.sleep(max(0.0, OUTAGE_MIN_SECONDS - (time.monotonic() - down)))

        def retrying() -> dict[str, object]:
            runs = running.invocations.snapshot()
            highest = max((r.max_receive for r in runs), default=0)
            if highest >= OUTAGE_RECEIVES:
                return {}
            return {f"receive count {highest} of {OUTAGE_RECEIVES} after invocations": len(runs)}

        wait_for_progress(retrying, what="retries during the outage", interval=0.1)
        during = [r for r in running.invocations.snapshot() if r.started >= down]
        accepted_while_down = running.fake.pipelines_calls() or running.fake.emails
        dead_while_down = sum(
            sum(running.depth(q)) for q in ("EventsDeadLetterQueue", "EmailDeadLetterQueue")
        )

        # ... and then Customer.io comes back
        running.fake.outage(False)
        up = time.monotonic()

        def undelivered() -> dict[str, object]:
            got_events = {(c.get("context") or {}).get("soak") for c in running.fake.pipelines_calls()}
            got_emails = {(e["json"].get("message_data") or {}).get("soak") for e in running.fake.emails}
            state: dict[str, object] = {
                "events not delivered": len(events - got_events),
                "emails not sent": len(emails - got_emails),
            }
            for queue in ("EventsQueue", "EmailQueue"):
                depth = running.depth(queue)
                state[f"{queue} (visible, in flight)"] = depth if any(depth) else None
            return state

        wait_for_progress(undelivered, what="delivery after the outage")
        drained = time.monotonic()

        runs = running.invocations.snapshot()
        outage_runs = [r for r in during if r.ended <= up]
        whole = sum(1 for r in outage_runs if r.error)
        figures = [
            f"- Customer.io down (503 to everything) for {up - down:.0f} s, then back; maxReceiveCount "
            f"{max_receive_count} (template default), retries {running.stack.options.retry_base:g}-"
            f"{RETRY_CAP_SECONDS} s",
            f"- messages: {len(events)} events ({API_EVENTS} through the API), {len(emails)} emails "
            f"({API_EMAILS} through the API, each answered 202 queued)",
            f"- while down: {len(outage_runs)} SQS invocations, {whole} failed as a whole "
            "(BatchProcessingError: Lambda backs off its polling), "
            f"{sum(r.failed for r in outage_runs):,} record retries, highest receive count "
            f"{max((r.max_receive for r in runs), default=0)} of {max_receive_count}",
            f"- after recovery: everything delivered in {drained - up:.0f} s; dead-lettered: 0; lost: 0",
        ]
        # THEN nothing was accepted, and nothing dead-lettered, while Customer.io was down
        assert not accepted_while_down
        assert dead_while_down == 0
        # AND every invocation that ran while it was down failed as a whole, so Lambda would slow down
        assert outage_runs, "no invocation ran during the outage"
        assert all(r.error == "BatchProcessingError" and r.failed == r.records for r in outage_runs), (
            outage_runs
        )
        # AND after recovery every message was delivered, with none dead-lettered early
        for dlq in ("EventsDeadLetterQueue", "EmailDeadLetterQueue"):
            assert running.depth(dlq) == (0, 0)
        assert max(r.max_receive for r in runs) < max_receive_count
        # AND each email was sent once (no timeouts here, so no at-least-once repeat)
        assert len(running.fake.emails) == len(emails)
        write_figures("Customer.io outage", figures)
