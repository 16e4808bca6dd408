"""A backlog at the template's defaults against a Customer.io that enforces a per-second request limit.

Tens of thousands of events wait on EventsQueue. The event source mapping is played as Lambda plays it
at the template's defaults (EventsBatchSize records per invocation, EventsMaximumConcurrency
invocations at a time, maxReceiveCount, the retry base and cap, the queue's visibility timeout) by
the real EventsFunction handler, against the fake Customer.io answering 429 beyond LIMIT requests a
second. Time is virtual (one round of concurrent invocations per second, jumps while everything waits
out its backoff), so a backlog that takes minutes of queue time runs in seconds. SQS is an in-memory
standard queue with visibility timeouts, receive counts and redrive to its DLQ.

Every event must be delivered, none twice (a refused request delivers nothing, so once means once),
nothing dead-lettered, and the 429s bounded. `make test` runs BACKLOG events; `make soak` runs
SOAK_BACKLOG.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
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

BACKLOG = 20_000
SOAK_BACKLOG = 100_000
LIMIT = 3  # requests per second the fake takes; the defaults' 5 invocations a second send more
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/cio-relay-events"
DLQ = QUEUE + "-dlq"
ARN = "arn:aws:sqs:us-east-1:123456789012:cio-relay-events"


def defaults() -> dict[str, int]:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)
    parameters = template["Parameters"]
    window = str(parameters["EventsBatchingWindowSeconds"]["Default"])
    return {
        "batch": int(parameters["EventsBatchSize"]["Default"]),
        "concurrency": int(parameters["EventsMaximumConcurrency"]["Default"]),
        "receives": int(parameters["MaxReceiveCount"]["Default"]),
        "base": int(parameters["RetryBaseSeconds"]["Default"]),
        "cap": int(parameters["RetryCapSeconds"]["Default"]),
        "visibility": int(template["Mappings"]["VisibilityForWindow"][window]["Seconds"]),
    }


@dataclass
class Message:
    id: str
    body: str
    attributes: dict[str, Any]
    visible_at: float = 0.0
    receives: int = 0
    handle: str = ""


@dataclass
class VirtualSQS:
    """EventsQueue and its DLQ in memory on a virtual clock (`now`), as the layer's SQS client."""

    visibility: int
    max_receives: int
    now: float = 0.0
    queue: dict[str, Message] = field(default_factory=dict)
    dead: list[Message] = field(default_factory=list)
    by_handle: dict[str, Message] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, url: str, body: str, attributes: dict[str, Any] | None = None) -> str:
        message = Message(str(uuid.uuid4()), body, dict(attributes or {}), visible_at=self.now)
        if url == DLQ:
            self.dead.append(message)
        else:
            assert url == QUEUE, url
            self.queue[message.id] = message
        return message.id

    def receive(self, n: int) -> list[Message]:
        taken: list[Message] = []
        for message in list(self.queue.values()):
            if len(taken) == n:
                break
            if message.visible_at > self.now:
                continue
            if message.receives >= self.max_receives:  # SQS's redrive: moved, without a reason
                del self.queue[message.id]
                self.dead.append(message)
                continue
            message.receives += 1
            message.visible_at = self.now + self.visibility
            message.handle = str(uuid.uuid4())
            self.by_handle[message.handle] = message
            taken.append(message)
        return taken

    def delete(self, message: Message) -> None:
        self.queue.pop(message.id, None)

    def next_visible(self) -> float | None:
        return min((m.visible_at for m in self.queue.values()), default=None)

    # -- the calls the layer makes ----------------------------------------------------------------

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            self.calls["ChangeMessageVisibilityBatch"] += 1
            for entry in Entries:
                self.by_handle[entry["ReceiptHandle"]].visible_at = self.now + entry["VisibilityTimeout"]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            self.calls["SendMessageBatch"] += 1
            ok = [
                {"Id": e["Id"], "MessageId": self.put(QueueUrl, e["MessageBody"], e.get("MessageAttributes"))}
                for e in Entries
            ]
        return {"Successful": ok, "Failed": []}


def record(message: Message) -> dict[str, Any]:
    return {
        "messageId": message.id,
        "receiptHandle": message.handle,
        "body": message.body,
        "attributes": {"ApproximateReceiveCount": str(message.receives), "SentTimestamp": "1796162335034"},
        "messageAttributes": {
            k: {"stringValue": v["StringValue"], "dataType": v["DataType"]}
            for k, v in message.attributes.items()
        },
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": ARN,
        "awsRegion": "us-east-1",
    }


def drain(events: int, fake: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch) -> None:
    random.seed(14)  # the backoff's jitter: the same run every time
    d = defaults()
    sqs = VirtualSQS(d["visibility"], d["receives"])
    monkeypatch.setattr(queues, "sqs_client", lambda: sqs)
    configure(
        monkeypatch,
        CUSTOMERIO_PIPELINES_URL=fake.pipelines_url,
        CUSTOMERIO_PIPELINES_API_KEY=PIPELINES_KEY,
        EVENTS_QUEUE_URL=QUEUE,
        EVENTS_DLQ_URL=DLQ,
        MAX_RECEIVE_COUNT=str(d["receives"]),
        RETRY_BASE_SECONDS=str(d["base"]),
        RETRY_CAP_SECONDS=str(d["cap"]),
    )
    fake.rate_limit(LIMIT, 1.0, clock=lambda: sqs.now)
    ids = {
        sqs.put(
            QUEUE,
            json.dumps({"type": "track", "userId": f"u{i % 997}", "event": "viewed", "properties": {"n": i}}),
        )
        for i in range(events)
    }
    handler = events_handler()
    invocations: list[float] = []  # seconds each full invocation took, really
    rounds = 0
    while sqs.queue:
        batches = [b for b in (sqs.receive(d["batch"]) for _ in range(d["concurrency"])) if b]
        if not batches:  # everything waits out its backoff: jump to the first that comes back
            upcoming = sqs.next_visible()
            assert upcoming is not None
            sqs.now = max(sqs.now + 1, upcoming)
            continue
        for batch in batches:
            started = time.perf_counter()
            try:
                answer = handler({"Records": [record(m) for m in batch]}, LambdaContext())
                failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
            except BatchProcessingError:
                failed = {m.id for m in batch}
            if len(batch) == d["batch"]:
                invocations.append(time.perf_counter() - started)
            for message in batch:
                if message.id not in failed:
                    sqs.delete(message)
        rounds += 1
        sqs.now += 1.0
        assert rounds < 100 * events, "the backlog is not draining"

    # THEN every event was delivered once, under the messageId derived from its SQS message id ...
    delivered = Counter(c["properties"]["n"] for c in fake.pipelines_calls())
    assert sorted(delivered) == list(range(events)), f"{events - len(delivered)} events never delivered"
    assert max(delivered.values()) == 1, "an event was delivered twice"
    namespace = uuid.UUID("8b0c1f0e-6c4f-4a53-9d53-6f8f2b0c1e01")
    assert {c["messageId"] for c in fake.pipelines_calls()} == {
        str(uuid.uuid5(namespace, f"{i}/0")) for i in ids
    }
    # ... nothing dead-lettered, and at most one 429 for every request Customer.io took
    assert sqs.dead == []
    statuses = Counter(r.status for r in fake.requests)
    assert statuses[429] > 0, "the limit was never reached: the test proves nothing"
    assert statuses[429] <= statuses[200], statuses
    per_batch = statistics.median(invocations)
    write_figures(
        f"Backlog at the defaults ({events:,} events)",
        [
            f"- {events:,} events, EventsBatchSize {d['batch']}, EventsMaximumConcurrency {d['concurrency']},"
            f" Customer.io taking {LIMIT} requests/s (429 beyond)",
            f"- drained in {sqs.now / 60:.1f} min of queue time ({rounds} rounds of invocations);"
            f" {statuses[200]} requests taken, {statuses[429]} answered 429; dead-lettered 0; twice 0",
            f"- relay time per invocation of {d['batch']} records (fake Customer.io on 127.0.0.1):"
            f" median {per_batch * 1000:.1f} ms",
        ],
    )


def test_backlog_drains_under_a_rate_limit(fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch) -> None:
    drain(BACKLOG, fake_cio, monkeypatch)


@pytest.mark.soak
def test_big_backlog_drains_under_a_rate_limit(
    fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain(SOAK_BACKLOG, fake_cio, monkeypatch)
