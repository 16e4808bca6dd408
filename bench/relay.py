"""cio-relay measured in this process: the EventsFunction and EmailFunction handlers, and the CPU floor.

AWS is a moto server in its own process (bench.child.MotoProcess). On the success path the events
handler makes no AWS call at all (SQS is called only for failed records), so what is timed there is
the handler and its Customer.io requests; the email handler also calls DynamoDB when idempotency is on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities import parameters
from cio_relay import cio, clients, forwarding, settings, transactional
from cio_relay.models.pipelines import Call
from pydantic import TypeAdapter

from bench.child import MOTO_CREDENTIAL, MotoProcess
from bench.fake import APP_KEY, PIPELINES_KEY, FakeProcess
from bench.workload import events, events_batch, queue_body
from tests.conftest import create_stack
from tests.support import REGION, LambdaContext, load_function

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null: the handlers' log lines and EMF metrics are still written
    (their cost is part of the handler's), just not onto the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of one call, with stdout silenced."""
    with quiet_stdout():
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = call()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall, cpu, result


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reset_layer_caches() -> None:
    """What tests/conftest.py's reset_caches() does: forget settings, clients and the cached secret."""
    settings.get_settings.cache_clear()
    cio.get_customerio.cache_clear()
    forwarding.get_forwarder.cache_clear()
    clients.reset()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    transactional.reset()


@contextlib.contextmanager
def relay_stack(fake: FakeProcess, moto: MotoProcess) -> Iterator[dict[str, str]]:
    """Queues, secret and idempotency table in the moto server, and the environment template.yaml sets.

    Yields the variables a fresh process needs to run a handler against the same stack.
    """
    aws = {
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": MOTO_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIAL,
        "AWS_SESSION_TOKEN": MOTO_CREDENTIAL,
    }
    with environment(aws):
        stack = create_stack(secret={"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY})
        env = {
            **aws,
            "CUSTOMERIO_SECRET_ID": stack.secret_arn,
            "CUSTOMERIO_PIPELINES_URL": fake.pipelines_url,
            "CUSTOMERIO_APP_URL": fake.app_url,
            "CUSTOMERIO_TRACK_URL": fake.track_url,
            "EVENTS_QUEUE_URL": stack.events_queue_url,
            "EVENTS_DLQ_URL": stack.events_dlq_url,
            "EMAIL_QUEUE_URL": stack.email_queue_url,
            "EMAIL_DLQ_URL": stack.email_dlq_url,
            "IDEMPOTENCY_TABLE": stack.idempotency_table,
            "POWERTOOLS_METRICS_NAMESPACE": "CioRelay",
            "POWERTOOLS_SERVICE_NAME": "cio-relay",
        }
        with environment(env):
            reset_layer_caches()
            yield env
            reset_layer_caches()


RELAY_AGENT = "cio-relay"


def check_delivered(fake: FakeProcess, sender: str, expected_events: int, what: str) -> dict[str, int]:
    """The fake's counts for one sender, after checking every event arrived and nothing failed."""
    stats = fake.stats(sender)
    if stats["errors"] or stats["events"] != expected_events:
        raise RuntimeError(f"{what}: the fake Customer.io saw {stats}, expected {expected_events} events")
    return stats


def no_failures(response: Any, what: str) -> None:
    if not isinstance(response, dict) or response.get("batchItemFailures"):
        raise RuntimeError(f"{what}: the handler reported failures: {str(response)[:300]}")


class EventsHandler:
    """EventsFunction's lambda_handler in a warm container; run(n) is one invocation on n SQS records."""

    def __init__(self) -> None:
        app = load_function("events")
        self._handler: Callable[[dict[str, Any], Any], Any] = app.lambda_handler
        self._events: dict[int, dict[str, Any]] = {}
        # Warm container: settings, the secret and the HTTP connection pool exist before any timed run.
        _, _, warm = timed(partial(self._handler, events_batch(10), LambdaContext()))
        no_failures(warm, "events warm-up")

    def run(self, size: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one invocation."""
        if size not in self._events:
            self._events[size] = events_batch(size)
        context = LambdaContext(remaining_ms=900_000)
        wall, cpu, response = timed(partial(self._handler, self._events[size], context))
        no_failures(response, f"events batch {size}")
        return wall, cpu


class Floor:
    """The work itself, per event: json.loads + validating the call's model + json.dumps.

    run(n) times it over the bodies of n EventsQueue records, like a contender (wall, CPU seconds).
    """

    def __init__(self) -> None:
        self._adapter = TypeAdapter[Any](Call)
        self._bodies: list[str] = []

    def run(self, count: int) -> tuple[float, float]:
        if len(self._bodies) < count:
            self._bodies = [queue_body(e) for e in events(count)]
        bodies, validate = self._bodies[:count], self._adapter.validate_python
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for body in bodies:
            data = json.loads(body)
            validate(data)
            json.dumps(data)
        return time.perf_counter() - wall0, time.process_time() - cpu0
