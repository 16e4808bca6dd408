"""cio-relay measured in this process: the EventsFunction and EmailFunction handlers, and the CPU floor.

AWS is moto (mock_aws). On the success path the events handler makes no AWS call at all (SQS is
called only for failed records), so what is timed is the handler and its Customer.io requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from aws_lambda_powertools.utilities import parameters
from cio_relay import cio, forwarding, queues, settings, transactional
from cio_relay.models.pipelines import Call
from moto import mock_aws
from pydantic import TypeAdapter

from bench.fake import APP_KEY, PIPELINES_KEY, FakeProcess
from bench.results import Run, median_run
from bench.workload import email_batch, events, events_batch, queue_body
from tests.conftest import create_stack
from tests.support import REGION, LambdaContext, load_function

ROOT = Path(__file__).resolve().parent.parent
EMAIL_APP = ROOT / "functions" / "email" / "app.py"


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
    queues.sqs_client.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    transactional.reset()


@contextlib.contextmanager
def relay_stack(fake: FakeProcess) -> Iterator[dict[str, str]]:
    """moto queues, secret and idempotency table, and the environment template.yaml would set."""
    aws = {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }
    with environment(aws), mock_aws():
        stack = create_stack(secret={"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY})
        env = {
            "CUSTOMERIO_SECRET_ID": stack.secret_arn,
            "CUSTOMERIO_PIPELINES_URL": fake.url,
            "CUSTOMERIO_APP_URL": fake.url,
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


def check_delivered(fake: FakeProcess, expected_events: int, what: str) -> dict[str, int]:
    stats = fake.stats()
    if stats["errors"] or stats["events"] != expected_events:
        raise RuntimeError(f"{what}: the fake Customer.io saw {stats}, expected {expected_events} events")
    return stats


def no_failures(response: Any, what: str) -> None:
    if not isinstance(response, dict) or response.get("batchItemFailures"):
        raise RuntimeError(f"{what}: the handler reported failures: {str(response)[:300]}")


def events_handler(fake: FakeProcess, batch_sizes: list[int], reps: dict[int, int]) -> dict[int, Run]:
    """EventsFunction's lambda_handler over SQS batches of each size; one invocation = one run."""
    app = load_function("events")
    handler: Callable[[dict[str, Any], Any], Any] = app.lambda_handler
    # Warm container: settings, secret and the HTTP connection pool exist before the first timed run.
    _, _, warm = timed(lambda: handler(events_batch(10), LambdaContext()))
    no_failures(warm, "events warm-up")
    results: dict[int, Run] = {}
    for size in batch_sizes:
        event = events_batch(size)
        fake.reset()
        samples = []
        runs = 1 + reps[size]
        for index in range(runs):
            wall, cpu, response = timed(partial(handler, event, LambdaContext(remaining_ms=900_000)))
            no_failures(response, f"events batch {size}")
            if index:
                samples.append((wall, cpu))
        stats = check_delivered(fake, size * runs, f"cio-relay batch {size}")
        results[size] = median_run(f"cio-relay {size}", size, samples, stats["requests"] / (size * runs))
    return results


def email_available() -> bool:
    return EMAIL_APP.exists()


def email_handler(fake: FakeProcess, sends: int, reps: int) -> dict[str, Run]:
    """EmailFunction's lambda_handler over an EmailQueue batch, idempotency on (moto DynamoDB) and off."""
    app: ModuleType = load_function("email")
    handler: Callable[[dict[str, Any], Any], Any] = app.lambda_handler
    results: dict[str, Run] = {}
    offset = 0
    for mode, disabled in (("on", "false"), ("off", "1")):
        with environment({"POWERTOOLS_IDEMPOTENCY_DISABLED": disabled}):
            reset_layer_caches()
            fake.reset()
            samples = []
            for index in range(1 + reps):
                # Fresh payloads every run: a repeated key would be answered from the idempotency record.
                event = email_batch(sends, offset)
                offset += sends
                wall, cpu, response = timed(partial(handler, event, LambdaContext(remaining_ms=900_000)))
                no_failures(response, f"email idempotency {mode}")
                if index:
                    samples.append((wall, cpu))
            stats = check_delivered(fake, sends * (1 + reps), f"email idempotency {mode}")
            results[mode] = median_run(
                f"email idempotency {mode}", sends, samples, stats["requests"] / (sends * (1 + reps))
            )
    return results


def cpu_floor(count: int, reps: int) -> float:
    """Microseconds per event of json.loads + validating the call's model + json.dumps: the work itself."""
    adapter = TypeAdapter[Any](Call)
    bodies = [queue_body(e) for e in events(count)]
    samples = []
    for _ in range(1 + reps):
        cpu0 = time.process_time()
        for body in bodies:
            data = json.loads(body)
            adapter.validate_python(data)
            json.dumps(data)
        samples.append(time.process_time() - cpu0)
    return statistics.median(samples[1:]) / count * 1e6
