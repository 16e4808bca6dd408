"""`make bench` (python -m bench): run every measurement once, print the report, write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cio_relay import __version__

from bench import email as email_bench
from bench import relay, sdks, startup
from bench.child import MotoProcess
from bench.fake import DEFAULT_LATENCY, FakeProcess
from bench.report import BATCH_SIZES, render, targets, update_readme
from bench.results import Results
from bench.suite import CDP_AGENT, CUSTOMERIO_AGENT, RELAY_AGENT, Contender, take_turns

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "bench" / "RESULTS.md"
SDK_EVENTS = 100  # calls per run of the one-request-per-call loops (about 2.7 s each at 25 ms)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def versions() -> dict[str, str]:
    found = {"cio-relay": __version__}
    for package in ("aws-lambda-powertools", "pydantic", "urllib3", "boto3", "moto"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def workers(stack: contextlib.ExitStack, results: Results, fake_url: str) -> dict[str, sdks.Worker]:
    """Install each SDK's venv if needed and start one worker per SDK mode; a failed install is a note."""
    started: dict[str, sdks.Worker] = {}
    modes = {
        "customerio": [("customerio", SDK_EVENTS)],
        "cdp": [("cdp-batch", max(BATCH_SIZES)), ("cdp-sync", SDK_EVENTS)],
    }
    for key, sdk in sdks.SDKS.items():
        say(f"SDK venv {sdk.venv.name}")
        problem = sdks.ensure_venv(sdk)
        if problem:
            results.notes.append(f"{key} SDK not measured: {problem}")
            continue
        for mode, max_events in modes[key]:
            started[mode] = stack.enter_context(sdks.Worker(sdk, mode, fake_url, max_events))
            package = "customerio" if key == "customerio" else "customerio-cdp-analytics"
            results.versions[package] = started[mode].version
    return started


def run(latency: float, quick: bool) -> Results:
    reps = 3 if quick else 7
    relay_reps = {10: reps, 100: 2 * reps, 1000: reps}
    results = Results(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        latency_ms=latency * 1000,
    )
    load_at_start = os.getloadavg()[0]
    with FakeProcess(latency) as fake, MotoProcess() as moto, contextlib.ExitStack() as stack:
        sdk = workers(stack, results, fake.url)
        with relay.relay_stack(fake, moto) as stack_env:
            handler = relay.EventsHandler(list(BATCH_SIZES))
            for size in BATCH_SIZES:
                say(f"SQS batch of {size}: cio-relay EventsFunction and CDP batching, taking turns")
                contenders: list[Contender] = [("cio-relay", RELAY_AGENT, handler.run)]
                if "cdp-batch" in sdk:
                    contenders.append(("cdp-batch", CDP_AGENT, sdk["cdp-batch"].run))
                runs = take_turns(fake, contenders, size, relay_reps[size])
                results.relay[size] = runs[0]
                if len(runs) > 1:
                    results.cdp_batch[size] = runs[1]
            if relay.email_available():
                say("cio-relay EmailFunction, idempotency on and off")
                results.email = relay.email_handler(fake, sends=20, reps=reps)
                say("cio-relay EmailFunction batch of 20: concurrent, sequential, `customerio` send_email")
                email_bench.measure(fake, moto, reps=reps, wired=True)
            else:
                results.notes.append("EmailFunction not measured: functions/email/app.py does not exist yet.")
            say("peak RSS of a fresh process handling a 100-record batch")
            results.rss = startup.peak_rss(stack_env, 100)
        loops = [(m, a) for m, a in (("customerio", CUSTOMERIO_AGENT), ("cdp-sync", CDP_AGENT)) if m in sdk]
        if loops:
            names = " and ".join(mode for mode, _ in loops)
            say(f"one request per call: {names}, {SDK_EVENTS} calls, taking turns")
            runs = take_turns(fake, [(m, a, sdk[m].run) for m, a in loops], SDK_EVENTS, 2 if quick else 3)
            found = dict(zip([m for m, _ in loops], runs, strict=True))
            results.customerio, results.cdp_sync = found.get("customerio"), found.get("cdp-sync")
    say("CPU floor of the work")
    results.floor_us = relay.cpu_floor(1000, reps)
    functions = [name for name in ("events", "email") if (startup.FUNCTIONS / name / "app.py").exists()]
    say(f"cold imports ({', '.join(functions)}) against the boto3 baseline")
    results.cold = startup.cold_imports(functions, runs=5 if quick else 7)
    for target in targets(results):
        name = next((n for n in functions if f"functions/{n}/" in target.name), None)
        if target.passed is False and name:
            slowest = ", ".join(
                f"{module} {us / 1000:.0f} ms" for us, module in startup.import_profile(name, 8)
            )
            results.notes.append(f"slowest imports of functions/{name}/app.py (-X importtime): {slowest}")
    results.load_average = (load_at_start, os.getloadavg()[0])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--latency", type=float, default=DEFAULT_LATENCY, help="fake response latency, seconds"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args.latency, args.quick)
    report = render(results) + email_bench.render(email_bench.LAST)
    RESULTS_FILE.write_text(report)
    print(report)
    readme = "README.md updated" if update_readme(report) else "README.md has no bench markers; not updated"
    say(f"done in {time.perf_counter() - started:.0f} s; wrote {RESULTS_FILE.relative_to(ROOT)}; {readme}")
    if args.strict and (
        any(t.passed is False for t in targets(results)) or email_bench.failed(email_bench.LAST)
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
