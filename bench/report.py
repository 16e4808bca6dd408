"""The benchmark's verdict: ratios, targets with PASS/FAIL, and the markdown table. No timing in here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.results import Results, Run

BATCH_SIZES = (10, 100, 1000)
RSS_LIMIT_MB = 100.0
COLD_LIMIT = 1.3
TIMES = "\N{MULTIPLICATION SIGN}"
README = Path(__file__).resolve().parent.parent / "README.md"
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: float | None  # None: could not be measured in this run
    passed: bool | None

    @property
    def verdict(self) -> str:
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _check(
    name: str,
    value: float | None,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    unit: str = "",
) -> Target:
    if at_most is not None:
        goal, passed = f"≤ {at_most:g}{unit}", None if value is None else value <= at_most + 1e-12
    elif at_least is not None:
        goal, passed = f"≥ {at_least:g}{unit}", None if value is None else value >= at_least
    else:
        raise ValueError("a target needs at_most or at_least")
    return Target(name, goal, value, passed)


def _eps(run: Run | None) -> float | None:
    return run.events_per_second if run else None


def _cpu(run: Run | None) -> float | None:
    return run.cpu_us_per_event if run else None


def targets(r: Results) -> list[Target]:
    """Issue 8's targets, each evaluated on this run's numbers."""
    relay, cdp, cold = r.relay, r.cdp_batch, r.cold
    found = [
        _check(
            f"Customer.io requests per event, SQS batch {size}",
            relay[size].requests_per_event if size in relay else None,
            at_most=limit,
        )
        for size, limit in ((100, 0.01), (1000, 0.002))
    ]
    found += [
        _check(
            f"handler CPU/event ÷ CDP batching CPU/event, batch {size}",
            ratio(_cpu(relay.get(size)), _cpu(cdp.get(size))),
            at_most=1.0,
        )
        for size in (100, 1000)
    ]
    found += [
        _check(
            f"events/s ÷ CDP batching events/s, batch {size}",
            ratio(_eps(relay.get(size)), _eps(cdp.get(size))),
            at_least=times,
            unit=TIMES,
        )
        for size, times in ((100, 1.0), (1000, 2.0))
    ]
    found += [
        _check(
            f"events/s ÷ `customerio` loop events/s, batch {size}",
            ratio(_eps(relay.get(size)), _eps(r.customerio)),
            at_least=90.0,
            unit=TIMES,
        )
        for size in (100, 1000)
    ]
    found += [
        _check(
            f"cold import of functions/{name}/app.py ÷ boto3 + 3 clients",
            ratio(cold.handlers_ms.get(name), cold.baseline_ms) if cold else None,
            at_most=COLD_LIMIT,
            unit=TIMES,
        )
        for name in ("events", "email")
    ]
    found.append(
        _check(
            "peak RSS handling a 100-record batch (MB)",
            r.rss["peak_mb"] if r.rss else None,
            at_most=RSS_LIMIT_MB,
        )
    )
    return found


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def _run_row(label: str, run: Run | None) -> str:
    if run is None:
        return f"| {label} | n/a | n/a | n/a | n/a |"
    return (
        f"| {label} | {run.events} | {fmt(run.events_per_second)} | {fmt(run.requests_per_event, 3)} "
        f"| {fmt(run.cpu_us_per_event, 1)} |"
    )


def render(r: Results) -> str:
    """The markdown report: machine and versions, throughput, ratios, email, cold start, targets."""
    versions = ", ".join(f"{name} {version}" for name, version in r.versions.items())
    load = ""
    if r.load_average:
        start, end = r.load_average
        load = f", 1-minute load average {start:.1f} at the start and {end:.1f} at the end"
    lines = [
        f"### Benchmark results ({r.date})",
        "",
        f"Machine: {r.machine}{load}. Versions: {versions}.",
        f"Fake Customer.io on loopback in its own process, answering {r.latency_ms:g} ms after each request. "
        "One run = one handler invocation, or one SDK loop over the calls and its flush(); cio-relay and "
        "the SDK it is compared with take turns. events/s: fastest of several runs; CPU: median.",
        "",
        "| contender | events per run | events/s | Customer.io requests/event | CPU µs/event |",
        "|---|---:|---:|---:|---:|",
    ]
    for size in BATCH_SIZES:
        if size in r.relay:
            lines.append(_run_row(f"**cio-relay** EventsFunction, SQS batch {size}", r.relay[size]))
    for size in BATCH_SIZES:
        if size in r.cdp_batch:
            lines.append(
                _run_row(f"`customerio-cdp-analytics` batching + flush(), {size} calls", r.cdp_batch[size])
            )
    lines.append(_run_row("`customerio-cdp-analytics` sync_mode=True loop", r.cdp_sync))
    lines.append(_run_row("`customerio` Track client loop (1 request/call)", r.customerio))
    lines.append(f"| floor: json.loads + model validation + json.dumps | | | | {fmt(r.floor_us, 1)} |")

    sizes = [s for s in BATCH_SIZES if s in r.relay]
    lines += ["", "| cio-relay ÷ other | " + " | ".join(f"batch {s}" for s in sizes) + " |"]
    lines.append("|---|" + "---:|" * len(sizes))
    comparisons: list[tuple[str, Callable[[int], float | None]]] = [
        ("events/s ÷ CDP batching", lambda s: ratio(_eps(r.relay[s]), _eps(r.cdp_batch.get(s)))),
        ("events/s ÷ CDP sync_mode", lambda s: ratio(_eps(r.relay[s]), _eps(r.cdp_sync))),
        ("events/s ÷ `customerio` loop", lambda s: ratio(_eps(r.relay[s]), _eps(r.customerio))),
        ("CPU/event ÷ CDP batching", lambda s: ratio(_cpu(r.relay[s]), _cpu(r.cdp_batch.get(s)))),
        ("CPU/event ÷ CDP sync_mode", lambda s: ratio(_cpu(r.relay[s]), _cpu(r.cdp_sync))),
        ("CPU/event ÷ `customerio` loop", lambda s: ratio(_cpu(r.relay[s]), _cpu(r.customerio))),
        ("CPU/event ÷ floor of the work", lambda s: ratio(_cpu(r.relay[s]), r.floor_us)),
    ]
    for label, compute in comparisons:
        lines.append(f"| {label} | " + " | ".join(fmt(compute(s), 2, TIMES) for s in sizes) + " |")

    lines += [
        "",
        "| EmailFunction, EmailQueue batch | sends per run | sends/s | App API requests/send | CPU µs/send |",
    ]
    lines.append("|---|---:|---:|---:|---:|")
    if r.email:
        for mode in ("on", "off"):
            lines.append(_run_row(f"idempotency {mode}", r.email.get(mode)))
        on, off = r.email.get("on"), r.email.get("off")
        lines.append(
            f"| idempotency on ÷ off (sends/s) | | {fmt(ratio(_eps(on), _eps(off)), 2, TIMES)} | | |"
        )
    else:
        lines.append("| n/a | | | | |")

    lines += ["", "| fresh process | median | baseline | ratio |", "|---|---:|---:|---:|"]
    if r.cold:
        base = r.cold.baseline_ms
        lines.append(
            f"| baseline: `import boto3` + SQS, Secrets Manager, DynamoDB clients | {fmt(base)} ms | | |"
        )
        for name, ms in r.cold.handlers_ms.items():
            lines.append(
                f"| import functions/{name}/app.py ({r.cold.runs} runs) | {fmt(ms)} ms | {fmt(base)} ms "
                f"| {fmt(ratio(ms, base), 2, TIMES)} |"
            )
    if r.rss:
        lines.append(
            f"| RSS after importing the events handler | {fmt(r.rss['after_import_mb'], 1)} MB | | |"
        )
        lines.append(f"| peak RSS handling a 100-record batch (twice) | {fmt(r.rss['peak_mb'], 1)} MB | | |")

    lines += ["", "| target | goal | measured | result |", "|---|---|---:|---|"]
    for target in targets(r):
        lines.append(f"| {target.name} | {target.goal} | {fmt(target.measured, 3)} | **{target.verdict}** |")
    if r.notes:
        lines += ["", *(f"- {note}" for note in r.notes)]
    return "\n".join(lines) + "\n"


def update_readme(report: str, readme: Path = README) -> bool:
    """Replace what stands between the bench markers in the README, if it has them."""
    if not readme.exists():
        return False
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(README_START)] + "\n" + report + text[end:])
    return True
