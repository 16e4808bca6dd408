"""The API path: EventsFunction answering identify/track/batch API Gateway events, against a minimal handler.

Both run in this process, warm, against the bench's moto SQS (in its own process, so its work is
not billed here): cio-relay's lambda_handler (resolver, validation, conventions, messageId, enqueue,
answer, logs and metrics), and a hand-written handler doing only the unavoidable: json.loads, the
call's model, one boto3 send (SendMessage; SendMessageBatch for a batch's calls) and a JSON answer.
Their CPU per call, run by run, shows what the relay's machinery costs on top.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
from botocore.config import Config
from cio_relay.models.pipelines import Batch, Identify, PipelinesCall, Track

from bench.context import Bench, take_turns
from bench.relay import timed
from bench.results import TIMES, Section, Spread, at_most, paired, show, table
from bench.workload import events
from tests.support import LambdaContext, api_event, load_function

# Requests per run: each is a round trip to moto, a few ms of its Python (a batch's ten messages more).
REQUESTS_PER_RUN = {"identify": 30, "track": 30, "batch": 10}
BATCH_CALLS = 10  # calls per /v1/batch request: one SendMessageBatch for either handler
LIMIT = 1.5
Handler = Callable[[dict[str, Any], Any], Any]
_SETTABLE = {"VisibilityTimeout", "MessageRetentionPeriod", "RedrivePolicy", "ReceiveMessageWaitTimeSeconds"}


def api_events(route: str, count: int) -> list[dict[str, Any]]:
    """`count` API Gateway events for one route, with the bench workload's calls as bodies."""
    calls = [{k: v for k, v in e.items() if k != "unix_time"} for e in events(count * BATCH_CALLS)]
    if route == "batch":
        bodies: list[Any] = [{"batch": calls[i * BATCH_CALLS : (i + 1) * BATCH_CALLS]} for i in range(count)]
    else:
        bodies = [c for c in calls if c["type"] == route][:count]
    return [api_event("POST", f"/v1/{route}", body) for body in bodies]


class MinimalHandler:
    """The least an API-to-SQS relay must do: parse, validate with the call's model, send, answer."""

    MODELS: dict[str, type[PipelinesCall] | type[Batch]] = {
        "/v1/identify": Identify,
        "/v1/track": Track,
        "/v1/batch": Batch,
    }

    def __init__(self, queue_url: str) -> None:
        self._queue_url = queue_url
        # The relay's own SQS client settings (cio_relay.queues).
        config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
        self._sqs = boto3.client("sqs", config=config)

    def empty_queue(self) -> None:
        """Between runs (untimed): moto slows down as a queue grows, and allows one purge a minute,
        so the queue is made again under the same name (and URL)."""
        name = self._queue_url.rstrip("/").rsplit("/", 1)[-1]
        attributes = self._sqs.get_queue_attributes(QueueUrl=self._queue_url, AttributeNames=["All"])
        keep = {k: v for k, v in attributes["Attributes"].items() if k in _SETTABLE}
        self._sqs.delete_queue(QueueUrl=self._queue_url)
        self._sqs.create_queue(QueueName=name, Attributes=keep)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        data = json.loads(event["body"])
        model = self.MODELS[event["path"]].model_validate(data)
        if isinstance(model, Batch):
            entries = [{"Id": str(i), "MessageBody": json.dumps(c)} for i, c in enumerate(model.calls())]
            answer = self._sqs.send_message_batch(QueueUrl=self._queue_url, Entries=entries)  # type: ignore[arg-type]
            ids = [entry["MessageId"] for entry in answer["Successful"]]
        else:
            body = json.dumps(model.model_dump(mode="json", by_alias=True, exclude_unset=True))
            ids = [self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=body)["MessageId"]]
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"status": "queued", "message_ids": ids}),
        }


def run_calls(
    handler: Handler, api: list[dict[str, Any]], what: str, after: Callable[[], None] | None = None
) -> tuple[float, float]:
    """(wall, CPU seconds) of answering every event in `api`, one invocation each; all must be 200.

    `after` runs once the run is timed.
    """

    def answer_all() -> list[Any]:
        return [handler(event, LambdaContext()) for event in api]

    wall, cpu, answers = timed(answer_all)
    bad = [a for a in answers if not isinstance(a, dict) or a.get("statusCode") != 200]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} answers were not 200, e.g. {str(bad[0])[:300]}")
    if after:
        after()
    return wall, cpu


def measure(bench: Bench) -> Section:
    section = Section("API path: EventsFunction against a minimal handler (warm, moto SQS)")
    relay: Handler = load_function("events").lambda_handler
    minimal = MinimalHandler(bench.env["EVENTS_QUEUE_URL"])
    reps = bench.reps(9, 3)
    rows, ratios = [], {}
    for route, count in REQUESTS_PER_RUN.items():
        bench.say(f"API {route}: cio-relay and the minimal handler, {count} requests a run")
        api = api_events(route, count)
        started = time.perf_counter()
        found = take_turns(
            [
                partial(run_calls, relay, api, f"cio-relay {route}", minimal.empty_queue),
                partial(run_calls, minimal, api, f"minimal {route}", minimal.empty_queue),
            ],
            reps,
        )
        cpu = [[c / count * 1e6 for _, c in runs] for runs in found]
        wall = [[w / count * 1e3 for w, _ in runs] for runs in found]
        ratios[route] = paired(cpu[0], cpu[1])
        rows.append(
            [
                f"POST /v1/{route}" + (f" ({BATCH_CALLS} calls)" if route == "batch" else ""),
                show(Spread.of(cpu[0]), 0),
                show(Spread.of(cpu[1]), 0),
                show(Spread.of(ratios[route]), 2, TIMES),
                show(Spread.of(wall[0]), 2),
                show(Spread.of(wall[1]), 2),
            ]
        )
        bench.say(f"API {route}: {time.perf_counter() - started:.0f} s")
    section.lines += table(
        [
            "request",
            "cio-relay CPU µs/request",
            "minimal CPU µs/request",
            "cio-relay ÷ minimal (CPU)",
            "cio-relay ms/request",
            "minimal ms/request",
        ],
        rows,
    )
    section.targets += [
        at_most(f"API {route}: handler CPU per request ÷ minimal handler", values, LIMIT)
        for route, values in ratios.items()
    ]
    return section
