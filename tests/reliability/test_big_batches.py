"""The largest SQS batch the template allows fits the function timeout with Customer.io down.

EventsFunction gets EventsBatchSize records (the template's MaxValue), Customer.io answers 503 to
everything, and every SQS call takes 20 ms (an in-region figure). Every record must come back with
its backoff (or reach the DLQ with its reason on its last receive) before the invocation's 30 s are up:
an invocation that times out leaves its records to come back at the queue's visibility timeout,
without backoff, and to reach the DLQ without a reason.

`make test` checks every record's outcome and that failure handling takes one SQS call per 10 records
(which is what makes it fit); `make soak` runs the same scenario and also compares the invocation's
elapsed time with the timeout, since `make test` holds no wall-clock assertion.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import yaml
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from cio_relay import queues

from local_stack.customerio import FakeCustomerIO
from local_stack.template import CfnLoader
from tests.conftest import PIPELINES_KEY
from tests.integration import configure, events_handler
from tests.reliability import write_figures
from tests.support import ROOT, LambdaContext

SQS_CALL_SECONDS = 0.02
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-events"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/cio-relay-events"
DLQ_URL = QUEUE_URL + "-dlq"


def template_defaults() -> dict[str, Any]:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)
    return {
        "timeout": template["Globals"]["Function"]["Timeout"],
        "max_batch": template["Parameters"]["EventsBatchSize"]["MaxValue"],
        "max_receives": template["Parameters"]["MaxReceiveCount"]["Default"],
    }


class SlowSQS:
    """SQS in memory, every call answered after SQS_CALL_SECONDS (from as many threads as call it)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.visibility: dict[str, int] = {}
        self.copies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _call(self, name: str) -> None:
        time.sleep(SQS_CALL_SECONDS)
        with self._lock:
            self.calls[name] += 1

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self._call("ChangeMessageVisibilityBatch")
        assert len(Entries) <= 10
        with self._lock:
            for entry in Entries:
                self.visibility[entry["ReceiptHandle"]] = entry["VisibilityTimeout"]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self._call("SendMessageBatch")
        assert len(Entries) <= 10
        assert QueueUrl == DLQ_URL
        with self._lock:
            self.copies.extend(Entries)
        return {
            "Successful": [{"Id": e["Id"], "MessageId": str(uuid.uuid4())} for e in Entries],
            "Failed": [],
        }


class Clock(LambdaContext):
    """A context whose remaining time runs down in real time from `timeout_s`."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


def big_event(n: int, receive_count: int) -> dict[str, Any]:
    records = []
    for i in range(n):
        body = json.dumps({"type": "track", "userId": f"user-{i}", "event": "page_viewed"})
        records.append(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"handle-{i}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": str(receive_count),
                    "SentTimestamp": "1796162335034",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


@pytest.mark.parametrize(
    "timed",
    [
        # make test: every record's outcome, in batched SQS calls (no assertion on elapsed time)
        pytest.param(False, id="outcomes"),
        # make soak: the same run must also end before the function timeout, on this machine's clock
        pytest.param(True, id="timed", marks=pytest.mark.soak),
    ],
)
@pytest.mark.parametrize("receive", ["first", "last"])
def test_biggest_batch_with_customerio_down_settles_within_the_timeout(
    receive: str, timed: bool, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the template's largest EventsBatchSize, its timeout and maxReceiveCount, Customer.io down
    # and 20 ms per SQS call
    defaults = template_defaults()
    n, timeout = defaults["max_batch"], defaults["timeout"]
    receive_count = 1 if receive == "first" else defaults["max_receives"]
    sqs = SlowSQS()
    monkeypatch.setattr(queues, "sqs_client", lambda: sqs)
    configure(
        monkeypatch,
        CUSTOMERIO_PIPELINES_URL=fake_cio.pipelines_url,
        CUSTOMERIO_PIPELINES_API_KEY=PIPELINES_KEY,
        EVENTS_QUEUE_URL=QUEUE_URL,
        EVENTS_DLQ_URL=DLQ_URL,
        MAX_RECEIVE_COUNT=str(defaults["max_receives"]),
        RETRY_BASE_SECONDS="30",
        RETRY_CAP_SECONDS="3600",
        CUSTOMERIO_CONNECT_TIMEOUT="3.05",
        CUSTOMERIO_READ_TIMEOUT="10",
    )
    fake_cio.outage(True)
    event = big_event(n, receive_count)
    context = Clock(timeout)

    # WHEN one invocation handles the whole batch
    started = time.monotonic()
    try:
        response = events_handler()(event, context)
        errors = 0
    except BatchProcessingError as exc:  # every record failed: the invocation fails, Lambda backs off
        response, errors = None, len(exc.child_exceptions)
    elapsed = time.monotonic() - started
    left = context.get_remaining_time_in_millis() / 1000

    # THEN (timed, under make soak) it ended before the function timeout ...
    if timed:
        assert left > 0, f"the invocation ran {elapsed:.1f} s, past its {timeout} s timeout"
    handles = {r["receiptHandle"] for r in event["Records"]}
    if receive == "first":
        # ... with every record reported and given its backoff (first receive: 0-30 s), 10 per call
        assert errors == n
        assert set(sqs.visibility) == handles
        assert all(0 <= seconds <= 30 for seconds in sqs.visibility.values())
        assert sqs.calls == Counter({"ChangeMessageVisibilityBatch": n // 10})
    else:
        # ... with every record dead-lettered with its reason and acknowledged, 10 per call
        assert response == {"batchItemFailures": []}
        assert len(sqs.copies) == n
        assert all(
            e["MessageAttributes"]["FailureReason"]["StringValue"].startswith("gave up after")
            for e in sqs.copies
        )
        assert sqs.calls == Counter({"SendMessageBatch": n // 10})
    assert fake_cio.requests, "Customer.io was never tried"
    write_figures(
        f"Biggest batch, Customer.io down ({receive} receive)",
        [
            f"- {n:,} records (EventsBatchSize MaxValue), Customer.io answering 503, 20 ms per SQS call",
            f"- {len(fake_cio.requests)} Customer.io requests, {sum(sqs.calls.values())} SQS calls",
            f"- invocation time {elapsed:.1f} s of the {timeout} s timeout ({left:.1f} s to spare)",
        ],
    )
