"""Big SQS batches: EventsFunction at BatchSize 10,000 against 1000, each beside the floor, and the
limits they must fit.

Lambda's SQS poller waits up to the batching window (EventsBatchingWindowSeconds) to fill a batch of
up to BatchSize records and never builds an event over the 6 MB invocation payload limit: it passes
the records that fit. With real-length receipt handles (bench.workload) that is about 5,600 of the
bench's calls, never 10,000. With a backlog the batch fills at once, so what one execution
environment delivers per second is the events of one invocation over its duration: that is what is
timed here, on the event Lambda would build.
"""

from __future__ import annotations

from pathlib import Path

from bench import startup
from bench.context import Bench
from bench.relay import RELAY_AGENT, Floor
from bench.results import RANGE, TIMES, Section, Spread, at_least, at_most, over, paired, show, table
from bench.sdk_compare import RUN_HEADER, events_handler, run_row
from bench.suite import head_to_head
from bench.workload import INVOKE_PAYLOAD_LIMIT, event_bytes, events_batch, records_within
from local_stack.template import load_yaml

ROOT = Path(__file__).resolve().parent.parent
SMALL, BIG = 1000, 10_000
FLOOR_LIMIT = 2.0
SPEEDUP = 1.5
TIMEOUT_SHARE = 0.1  # the slowest big invocation may use a tenth of the function timeout here
MEMORY_SHARE = 0.5


def function_limits(template: Path = ROOT / "template.yaml") -> tuple[float, float]:
    """(timeout seconds, memory MB) of EventsFunction: its own Properties, else the Globals."""
    data = load_yaml(template)
    globals_ = (data.get("Globals") or {}).get("Function") or {}
    own = (data["Resources"].get("EventsFunction") or {}).get("Properties") or {}
    return float(own.get("Timeout", globals_.get("Timeout", 3))), float(
        own.get("MemorySize", globals_.get("MemorySize", 128))
    )


def measure(bench: Bench) -> Section:
    section = Section(f"Big batches: SQS BatchSize {BIG:,} against {SMALL:,}")
    handler, floor = events_handler(bench), Floor()
    # What Lambda hands the function at BatchSize 10,000 with a backlog: as many records as fit in 6 MB.
    every = events_batch(BIG)
    delivered = records_within(every)
    big_event = {"Records": every["Records"][:delivered]}
    bench.say(f"SQS batches of {delivered:,} (BatchSize {BIG:,}, 6 MB) and {SMALL:,}, each beside the floor")
    relay_small, floor_small, relay_big, floor_big = head_to_head(
        bench.fake,
        [
            (f"cio-relay {SMALL}", RELAY_AGENT, handler.run),
            (f"floor {SMALL}", None, floor.run),
            (f"cio-relay {delivered}", RELAY_AGENT, handler.run),
            (f"floor {delivered}", None, floor.run),
        ],
        (SMALL, SMALL, delivered, delivered),
        reps=bench.reps(9, 3),
    )
    bench.say(f"peak RSS of a fresh process handling {delivered:,}-record batches")
    rss = startup.peak_rss(bench.env, delivered)
    timeout, memory_mb = function_limits()
    big_label = f"BatchSize {BIG:,} ({delivered:,} records, 6 MB)"

    section.lines += table(
        RUN_HEADER,
        [
            run_row(f"**cio-relay** EventsFunction, SQS batch {SMALL:,}", relay_small),
            run_row(f"floor: json.loads + model + json.dumps, {SMALL:,} calls", floor_small),
            run_row(f"**cio-relay** EventsFunction, SQS {big_label}", relay_big),
            run_row(f"floor: json.loads + model + json.dumps, {delivered:,} calls", floor_big),
        ],
    )
    speedup = paired(relay_big.events_per_second(), relay_small.events_per_second())
    small_floor = paired(relay_small.cpu_us_per_event(), floor_small.cpu_us_per_event())
    big_floor = paired(relay_big.cpu_us_per_event(), floor_big.cpu_us_per_event())
    slowest = max(relay_big.walls())
    section.lines += [
        "",
        *table(
            ["quantity", RANGE],
            [
                [f"events/s at {big_label} ÷ at {SMALL:,}", show(Spread.of(speedup), 2, TIMES)],
                [f"CPU/event at {SMALL:,} ÷ floor", show(Spread.of(small_floor), 2, TIMES)],
                [f"CPU/event at {delivered:,} ÷ floor", show(Spread.of(big_floor), 2, TIMES)],
                [
                    f"wall time of one {delivered:,}-record invocation (s)",
                    show(Spread.of(relay_big.walls()), 3),
                ],
                [
                    f"records Lambda delivers at BatchSize {BIG:,} (real-length receipt handles)",
                    f"{delivered:,}: {event_bytes(big_event):,} of {INVOKE_PAYLOAD_LIMIT:,} bytes",
                ],
                [f"an event of {BIG:,} such records (bytes)", f"{event_bytes(every):,}"],
                [
                    f"peak RSS of a fresh process handling {delivered:,} records twice (MB)",
                    f"{rss['peak_mb']:.0f} of {memory_mb:.0f}",
                ],
            ],
        ),
    ]
    section.targets += [
        at_least(f"events/s, SQS {big_label} ÷ batch {SMALL:,}", speedup, SPEEDUP),
        at_most(f"CPU/event, SQS batch {SMALL:,} ÷ floor", small_floor, FLOOR_LIMIT),
        at_most(f"CPU/event, SQS batch of {delivered:,} ÷ floor", big_floor, FLOOR_LIMIT),
        at_most(
            f"slowest {delivered:,}-record (6 MB) invocation ÷ function timeout ({timeout:g} s)",
            over([slowest], timeout),
            TIMEOUT_SHARE,
            unit="",
        ),
        at_most(
            f"peak RSS handling {delivered:,} records ÷ function memory ({memory_mb:g} MB)",
            over([rss["peak_mb"]], memory_mb),
            MEMORY_SHARE,
            unit="",
        ),
    ]
    return section


__all__ = ["function_limits", "measure"]
