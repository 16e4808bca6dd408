"""EmailFunction on EmailQueue batches: sequential vs concurrent sends, idempotency off and on, and the
`customerio` package's `APIClient.send_email` loop, taking turns against one fake Customer.io.

`python -m bench.email` runs this part alone; `make bench` runs it with the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess  # nosec B404 - the SDK venv's python on this bench's own script
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.child import MotoProcess
from bench.context import Bench
from bench.fake import APP_KEY, DEFAULT_LATENCY, FakeProcess
from bench.relay import environment, no_failures, relay_stack, reset_layer_caches, timed
from bench.report import target_rows
from bench.results import Run, Section, Spread, Target, at_least, at_most, median, paired, show, table
from bench.sdks import SDKS, ensure_venv
from bench.workload import email_batch, email_body
from tests.support import LambdaContext, load_function

HERE = Path(__file__).resolve().parent
SDK_SCRIPT = HERE / "email_sdk_loop.py"
BATCH = 20
SPEEDUP_AT_LEAST = 8.0  # concurrent sends/s ÷ sequential sends/s
CPU_AT_MOST = 0.5  # relay CPU per send (idempotency off) ÷ the SDK's CPU per send_email
# EmailFunction configurations measured; each is a warm container of its own (settings are read once).
MODES: dict[str, dict[str, str]] = {
    "sequential": {"EMAIL_SEND_CONCURRENCY": "1", "POWERTOOLS_IDEMPOTENCY_DISABLED": "true"},
    "concurrent": {"EMAIL_SEND_CONCURRENCY": "10", "POWERTOOLS_IDEMPOTENCY_DISABLED": "true"},
    "concurrent, idempotency on": {
        "EMAIL_SEND_CONCURRENCY": "10",
        "POWERTOOLS_IDEMPOTENCY_DISABLED": "false",
    },
}
SDK_LABEL = "`customerio` APIClient.send_email loop"


@dataclass
class EmailBench:
    runs: dict[str, Run] = field(default_factory=dict)
    dynamodb_us_per_send: float | None = None  # CPU of the two DynamoDB calls a send makes
    sdk_version: str = ""
    notes: list[str] = field(default_factory=list)

    def ratios(self, a: str, b: str, per_event: str) -> list[float]:
        """Run by run (they took turns): `per_event` ("events_per_second" or "cpu_us_per_event")."""
        first, second = self.runs.get(a), self.runs.get(b)
        if first is None or second is None:
            return []
        return paired(getattr(first, per_event)(), getattr(second, per_event)())

    def targets(self) -> list[Target]:
        return [
            at_least(
                f"EmailQueue batch {BATCH}: sends/s concurrent ÷ sequential",
                self.ratios("concurrent", "sequential", "events_per_second"),
                SPEEDUP_AT_LEAST,
            ),
            at_most(
                "CPU per send, idempotency off ÷ `customerio` send_email",
                self.ratios("concurrent", SDK_LABEL, "cpu_us_per_event"),
                CPU_AT_MOST,
            ),
        ]


LAST: EmailBench | None = None  # what the last measure() found, for `make bench`'s report


class SDKWorker:
    def __init__(self, url: str, count: int) -> None:
        sdk = SDKS["customerio"]
        self._problem = ensure_venv(sdk)
        self._command = [str(sdk.python), "-I", str(SDK_SCRIPT)]
        self._config = {
            "url": url,
            "app_key": APP_KEY,
            "bodies": [json.loads(email_body(i)) for i in range(count)],
        }
        self._proc: subprocess.Popen[str] | None = None
        self.version = ""

    def __enter__(self) -> SDKWorker | None:
        if self._problem:
            return None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
        }
        self._proc = subprocess.Popen(  # nosec B603 - a fixed command
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE
        )
        self.version = str(self._exchange(self._config)["version"])
        return self

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None or self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError("the customerio send_email worker is not running")
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the customerio send_email worker stopped")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, count: int) -> tuple[float, float]:
        answer = self._exchange({"count": count})
        return float(answer["wall"]), float(answer["cpu"])

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.stdin:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)

    @property
    def problem(self) -> str | None:
        return self._problem


@contextlib.contextmanager
def mode(values: dict[str, str]) -> Iterator[None]:
    """One EmailFunction configuration: the environment it reads, in a container of its own."""
    with environment(values), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Powertools warns that disabling idempotency is for tests
        reset_layer_caches()
        yield
    reset_layer_caches()


def relay_run(
    handler: Callable[[dict[str, Any], Any], Any], values: dict[str, str], offset: int
) -> tuple[float, float]:
    # Fresh payloads and SQS message ids every run: a repeated key would be answered from its record.
    event = email_batch(BATCH, offset)
    with mode(values):
        _, _, warm = timed(partial(handler, email_batch(BATCH, offset + 10_000_000), LambdaContext()))
        no_failures(warm, "email warm-up")
        wall, cpu, response = timed(partial(handler, event, LambdaContext(remaining_ms=900_000)))
    no_failures(response, "email batch")
    return wall, cpu


def dynamodb_cpu(reps: int) -> float:
    """CPU µs of one send's DynamoDB calls (the in-progress PutItem and the completion UpdateItem)
    through the function's own client against the same moto server."""
    from cio_relay import transactional  # noqa: PLC0415 - after the environment is set

    client = transactional.dynamodb_client()
    table = os.environ["IDEMPOTENCY_TABLE"]
    samples = []
    for rep in range(reps + 1):
        cpu0 = time.process_time()
        for i in range(BATCH):
            key = {"id": {"S": f"bench-{rep}-{i}"}}
            client.put_item(
                TableName=table, Item={**key, "status": {"S": "INPROGRESS"}, "expiration": {"N": "1"}}
            )
            client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET #s = :s",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":s": {"S": "COMPLETED"}},
            )
        if rep:
            samples.append(time.process_time() - cpu0)
    return statistics.median(samples) / BATCH * 1e6


def measure(fake: FakeProcess, moto: MotoProcess, reps: int = 5, *, wired: bool = False) -> EmailBench:
    """Each EmailFunction mode and the SDK loop take turns: 1 warm-up + `reps` runs each.

    `wired`: the environment already points at a stack in `moto` (bench.relay.relay_stack).
    """
    global LAST  # noqa: PLW0603 - read by `make bench`'s report
    found = EmailBench()
    handler = load_function("email").lambda_handler
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in [*MODES, SDK_LABEL]}
    stack = contextlib.nullcontext() if wired else relay_stack(fake, moto)
    with stack, SDKWorker(fake.app_url, BATCH) as sdk:
        if sdk is None:
            found.notes.append("`customerio` SDK not measured: its venv could not be installed")
        else:
            found.sdk_version = sdk.version
        contenders: list[tuple[str, Callable[[int], tuple[float, float]]]] = [
            (name, partial(lambda values, offset: relay_run(handler, values, offset), values))
            for name, values in MODES.items()
        ]
        if sdk is not None:
            contenders.append((SDK_LABEL, lambda _: sdk.run(BATCH)))
        offset = 0
        for index in range(1 + reps):
            for name, run in contenders if index % 2 else list(reversed(contenders)):
                offset += BATCH
                sample = run(offset)
                if index:
                    samples[name].append(sample)
        with mode(MODES["concurrent, idempotency on"]):
            found.dynamodb_us_per_send = dynamodb_cpu(reps)
    for name, measured in samples.items():
        if measured:
            found.runs[name] = Run(name, BATCH, tuple(measured), 1.0)
    LAST = found
    return found


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def section(found: EmailBench) -> Section:
    """The report's transactional section."""
    done = Section(f"EmailFunction concurrency (EmailQueue batch {BATCH})", notes=list(found.notes))
    rows = []
    for name in [*MODES, SDK_LABEL]:
        run = found.runs.get(name)
        label = name if name == SDK_LABEL else f"**cio-relay** {name}"
        rate = Spread.of(run.events_per_second()) if run else None
        cpu = Spread.of(run.cpu_us_per_event()) if run else None
        rows.append([label, show(rate, 0), show(cpu, 0)])
    done.lines += table(["contender", "sends/s", "CPU µs/send"], rows)
    on, off = found.runs.get("concurrent, idempotency on"), found.runs.get("concurrent")
    on_cpu, off_cpu = (
        (median(on.cpu_us_per_event()), median(off.cpu_us_per_event())) if on and off else (None, None)
    )
    if on_cpu is not None and off_cpu is not None:
        extra = on_cpu - off_cpu
        dynamo = found.dynamodb_us_per_send or 0.0
        calls = (
            f"{fmt(dynamo)} µs are the two DynamoDB calls through boto3 (in-progress PutItem, completion "
            "UpdateItem)"
        )
        rest = (
            f"the other {fmt(extra - dynamo)} µs are Powertools' idempotency bookkeeping (hashing the key "
            "and the payload, building and parsing its records, serialising the answer)"
            if extra >= dynamo
            else "so the calls account for all of it: the two medians differ by less than this run's noise"
        )
        done.lines += [
            "",
            f"Idempotency on costs {fmt(extra)} µs of CPU per send over off (medians): {calls}, {rest}.",
        ]
    done.targets += found.targets()
    return done


def measure_section(bench: Bench) -> Section:
    """`make bench`'s hook: this module's measurement against the bench's stack."""
    bench.say(f"cio-relay EmailFunction batch of {BATCH}: concurrent, sequential, `customerio` send_email")
    return section(measure(bench.fake, bench.moto, reps=bench.reps(5, 3), wired=True))


def main() -> None:
    quick = "--quick" in sys.argv
    with FakeProcess(DEFAULT_LATENCY) as fake, MotoProcess() as moto:
        found = measure(fake, moto, reps=3 if quick else 5)
    done = section(found)
    print("\n".join([*done.lines, "", *target_rows(done.targets)]))
    if "--strict" in sys.argv and any(t.passed is False for t in done.targets):
        sys.exit(1)


if __name__ == "__main__":
    main()
