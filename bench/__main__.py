"""`make bench` (python -m bench): run every measurement once and print the report.

The report and its data go to .cache/figures/bench.md and bench.json (ignored by git): a bench run
never changes a tracked file. `make figures` copies the report into docs/performance.md on purpose.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cio_relay import __version__

from bench import api_path, big_batches, sdk_compare, startup
from bench import email as email_bench
from bench.child import MotoProcess
from bench.context import Bench, say
from bench.fake import DEFAULT_LATENCY, FakeProcess
from bench.relay import relay_stack
from bench.report import REPORT_FILE, ROOT, Header, failed, write
from bench.results import Section

# Every measuring module, in report order: name (for --only) -> measure(bench) -> Section.
MEASUREMENTS: dict[str, Callable[[Bench], Section]] = {
    "sdks": sdk_compare.measure,
    "big": big_batches.measure,
    "api": api_path.measure,
    "email": email_bench.measure_section,
    "cold": startup.measure,
}


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


def run(names: list[str], latency: float, quick: bool) -> list[Section]:
    sections = []
    with FakeProcess(latency) as fake, MotoProcess() as moto, relay_stack(fake, moto) as env:
        bench = Bench(fake=fake, moto=moto, env=env, quick=quick)
        for name in names:
            started = time.perf_counter()
            sections.append(MEASUREMENTS[name](bench))
            say(f"{name}: {time.perf_counter() - started:.0f} s")
    return sections


def exit_status(sections: list[Section], *, strict: bool) -> int:
    """0, or 1 with --strict when a target failed (a target that could not be measured is no failure)."""
    missed = failed(sections)
    if strict and missed:
        say("--strict: failed " + "; ".join(f"{t.name} ({t.goal})" for t in missed))
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--latency", type=float, default=DEFAULT_LATENCY, help="fake response latency, seconds"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated measurements to run (default: all of {','.join(MEASUREMENTS)})",
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    started, load = time.perf_counter(), os.getloadavg()[0]
    sections = run(names, args.latency, args.quick)
    header = Header(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        latency_ms=args.latency * 1000,
        load_average=(load, os.getloadavg()[0]),
        seconds=time.perf_counter() - started,
    )
    print(write(header, sections))
    missed = len(failed(sections))
    say(f"done in {header.seconds:.0f} s; wrote {REPORT_FILE.relative_to(ROOT)}; {missed} failed")
    sys.exit(exit_status(sections, strict=args.strict))


if __name__ == "__main__":
    main()
