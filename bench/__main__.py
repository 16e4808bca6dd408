"""`make bench` (python -m bench): run every measurement once, print the report, write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cio_relay import __version__

from bench import relay, sdks, startup
from bench.fake import DEFAULT_LATENCY, FakeProcess
from bench.report import BATCH_SIZES, render, targets, update_readme
from bench.results import Results

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


def measure_sdks(results: Results, fake: FakeProcess, reps: int) -> None:
    for key, sdk in sdks.SDKS.items():
        problem = sdks.ensure_venv(sdk)
        if problem:
            results.notes.append(f"{key} SDK not measured: {problem}")
            continue
        if key == "customerio":
            say("`customerio` Track client loop")
            results.customerio, version = sdks.run_loop(sdk, "customerio", fake, SDK_EVENTS, reps=2)
            results.versions["customerio"] = version
            continue
        say("customerio-cdp-analytics, sync_mode=True")
        results.cdp_sync, version = sdks.run_loop(sdk, "cdp-sync", fake, SDK_EVENTS, reps=2)
        results.versions["customerio-cdp-analytics"] = version
        for size in BATCH_SIZES:
            say(f"customerio-cdp-analytics, batching + flush(), {size} calls")
            results.cdp_batch[size], _ = sdks.run_loop(sdk, "cdp-batch", fake, size, reps=reps)


def run(latency: float, quick: bool) -> Results:
    reps = 3 if quick else 7
    relay_reps = {10: 3 * reps, 100: 2 * reps, 1000: reps}
    results = Results(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        latency_ms=latency * 1000,
    )
    with FakeProcess(latency) as fake:
        with relay.relay_stack(fake):
            say("cio-relay EventsFunction over SQS batches")
            results.relay = relay.events_handler(fake, list(BATCH_SIZES), relay_reps)
            if relay.email_available():
                say("cio-relay EmailFunction, idempotency on and off")
                results.email = relay.email_handler(fake, sends=20, reps=reps)
            else:
                results.notes.append("EmailFunction not measured: functions/email/app.py does not exist yet.")
        measure_sdks(results, fake, reps)
        say("peak RSS of a fresh process handling a 100-record batch")
        with startup.secret_server() as aws:
            results.rss = startup.peak_rss(fake.url, 100, aws)
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
    report = render(results)
    RESULTS_FILE.write_text(report)
    print(report)
    readme = "README.md updated" if update_readme(report) else "README.md has no bench markers; not updated"
    say(f"done in {time.perf_counter() - started:.0f} s; wrote {RESULTS_FILE.relative_to(ROOT)}; {readme}")
    if args.strict and any(t.passed is False for t in targets(results)):
        sys.exit(1)


if __name__ == "__main__":
    main()
