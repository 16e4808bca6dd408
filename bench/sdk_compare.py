"""cio-relay's EventsFunction against the official SDKs: SQS batches of 10, 100, 1000 and SDK loops."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from bench import sdks
from bench.context import Bench
from bench.relay import EventsHandler, Floor
from bench.results import (
    RANGE,
    TIMES,
    Run,
    Section,
    Spread,
    at_least,
    at_most,
    median,
    over,
    paired,
    show,
    table,
)
from bench.suite import CDP_AGENT, CUSTOMERIO_AGENT, RELAY_AGENT, Contender, head_to_head

BATCH_SIZES = (10, 100, 1000)
SDK_EVENTS = 100  # calls per run of the one-request-per-call loops (about 2.7 s each at 25 ms)


def events_handler(bench: Bench) -> EventsHandler:
    """The warm EventsFunction container the event-delivery sections share."""
    return bench.once("events-handler", EventsHandler)


def workers(stack: contextlib.ExitStack, bench: Bench, notes: list[str]) -> dict[str, sdks.Worker]:
    """Install each SDK's venv if needed and start one worker per SDK mode; a failed install is a note."""
    started: dict[str, sdks.Worker] = {}
    modes = {
        "customerio": [("customerio", SDK_EVENTS)],
        "cdp": [("cdp-batch", max(BATCH_SIZES)), ("cdp-sync", SDK_EVENTS)],
    }
    for key, sdk in sdks.SDKS.items():
        bench.say(f"SDK venv {sdk.venv.name}")
        problem = sdks.ensure_venv(sdk)
        if problem:
            notes.append(f"{key} SDK not measured: {problem}")
            continue
        for mode, max_events in modes[key]:
            # The `customerio` package speaks the Track API, the CDP package the Pipelines API.
            url = bench.fake.track_url if key == "customerio" else bench.fake.pipelines_url
            started[mode] = stack.enter_context(sdks.Worker(sdk, mode, url, max_events))
    return started


def run_row(label: str, run: Run | None) -> list[str]:
    if run is None:
        return [label, "n/a", "n/a", "n/a", "n/a"]
    return [
        label,
        f"{run.events:,}",
        show(Spread.of(run.events_per_second()), 0),
        f"{run.requests_per_event:.3f}",
        show(Spread.of(run.cpu_us_per_event()), 1),
    ]


RUN_HEADER = ["contender", "events per run", "events/s", "Customer.io requests/event", "CPU µs/event"]


def measure(bench: Bench) -> Section:
    section = Section("cio-relay EventsFunction and the official SDKs")
    relay: dict[int, Run] = {}
    cdp: dict[int, Run] = {}
    floor: dict[int, Run] = {}
    loops: dict[str, Run] = {}
    handler, floor_work = events_handler(bench), Floor()
    reps = {10: bench.reps(7, 3), 100: bench.reps(14, 6), 1000: bench.reps(7, 3)}
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        sdk = workers(stack, bench, section.notes)
        versions = {w.mode: w.version for w in sdk.values()}
        for size in BATCH_SIZES:
            bench.say(f"SQS batch of {size}: cio-relay EventsFunction and CDP batching, taking turns")
            contenders: list[Contender] = [("cio-relay", RELAY_AGENT, handler.run)]
            contenders.append(("floor", None, floor_work.run))
            if "cdp-batch" in sdk:
                contenders.append(("cdp-batch", CDP_AGENT, sdk["cdp-batch"].run))
            runs = head_to_head(bench.fake, contenders, size, reps[size])
            relay[size], floor[size] = runs[0], runs[1]
            if len(runs) > 2:
                cdp[size] = runs[2]
        named = [(m, a) for m, a in (("customerio", CUSTOMERIO_AGENT), ("cdp-sync", CDP_AGENT)) if m in sdk]
        if named:
            bench.say(f"one request per call: {' and '.join(m for m, _ in named)}, {SDK_EVENTS} calls")
            runs = head_to_head(
                bench.fake, [(m, a, sdk[m].run) for m, a in named], SDK_EVENTS, bench.reps(3, 2)
            )
            loops = dict(zip([m for m, _ in named], runs, strict=True))
    if versions:
        cdp_version = versions.get("cdp-batch") or versions.get("cdp-sync")
        section.lines.append(
            "SDK versions: "
            + ", ".join(
                f"{name} {version}"
                for name, version in (
                    ("customerio", versions.get("customerio")),
                    ("customerio-cdp-analytics", cdp_version),
                )
                if version
            )
            + "."
        )
        section.lines.append("")
    rows = [run_row(f"**cio-relay** EventsFunction, SQS batch {s}", relay[s]) for s in relay]
    rows += [run_row(f"`customerio-cdp-analytics` batching + flush(), {s} calls", cdp[s]) for s in cdp]
    rows.append(run_row("`customerio-cdp-analytics` sync_mode=True loop", loops.get("cdp-sync")))
    rows.append(run_row("`customerio` Track client loop (1 request/call)", loops.get("customerio")))
    rows += [run_row(f"floor: json.loads + model + json.dumps, {s} calls", floor[s]) for s in floor]
    section.lines += table(RUN_HEADER, rows)

    def eps(run: Run | None) -> list[float]:
        return run.events_per_second() if run else []

    def cpu(run: Run | None) -> list[float]:
        return run.cpu_us_per_event() if run else []

    comparisons: list[tuple[str, Callable[[int], list[float]]]] = [
        ("events/s ÷ CDP batching", lambda s: paired(eps(relay[s]), eps(cdp.get(s)))),
        ("CPU/event ÷ CDP batching", lambda s: paired(cpu(relay[s]), cpu(cdp.get(s)))),
        ("CPU/event ÷ floor of the work", lambda s: paired(cpu(relay[s]), cpu(floor[s]))),
    ]
    sizes = list(relay)
    section.lines += ["", f"Run by run, cio-relay over the other, {RANGE}:", ""]
    section.lines += table(
        ["cio-relay ÷ other", *(f"batch {s}" for s in sizes)],
        [[label, *(show(Spread.of(f(s)), 2, TIMES) for s in sizes)] for label, f in comparisons],
    )
    # The one-request loops ran apart from the relay (seconds per run): each relay run over the loop's
    # median run.
    loop_rates = {name: median(eps(loop)) for name, loop in loops.items()}
    against_loop = {s: over(eps(relay[s]), loop_rates.get("customerio")) for s in sizes}
    loop_rows = [
        [f"events/s ÷ `{name}` loop", *(show(Spread.of(over(eps(relay[s]), rate)), 1, TIMES) for s in sizes)]
        for name, rate in loop_rates.items()
    ]
    section.lines += [
        "",
        *table(["cio-relay ÷ one-request loop's median run", *(f"batch {s}" for s in sizes)], loop_rows),
    ]
    section.targets += [
        at_most(
            f"Customer.io requests per event, SQS batch {size}",
            [relay[size].requests_per_event] if size in relay else [],
            limit,
            unit="",
        )
        for size, limit in ((100, 0.01), (1000, 0.002))
    ]
    section.targets += [
        at_most(f"handler CPU/event ÷ CDP batching CPU/event, batch {s}", comparisons[1][1](s), 1.0)
        for s in (100, 1000)
        if s in relay
    ]
    section.targets += [
        at_least(f"events/s ÷ CDP batching events/s, batch {s}", comparisons[0][1](s), times)
        for s, times in ((100, 1.0), (1000, 2.0))
        if s in relay
    ]
    section.targets += [
        at_least(f"events/s ÷ `customerio` loop events/s, batch {s}", against_loop.get(s, []), 90.0)
        for s in (100, 1000)
    ]
    return section
