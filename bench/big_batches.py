"""Big SQS batches: EventsFunction on 10,000 records against 1000, the floor, and the limits they must fit.

Lambda's SQS poller waits up to the batching window (EventsBatchingWindowSeconds) to fill a batch of
up to BatchSize records and never builds an event over the 6 MB invocation payload limit. With a
backlog the batch fills at once, so what one execution environment delivers per second is the events
of one invocation over its duration: that is what is timed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import startup
from bench.context import Bench
from bench.relay import RELAY_AGENT, Floor
from bench.results import RANGE, TIMES, Section, Spread, at_least, at_most, over, paired, show, table
from bench.sdk_compare import RUN_HEADER, events_handler, run_row
from bench.suite import head_to_head
from bench.workload import events_batch
from local_stack.template import load_yaml

ROOT = Path(__file__).resolve().parent.parent
SMALL, BIG = 1000, 10_000
INVOKE_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes of the event Lambda hands the function
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


def event_bytes(event: dict[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":")).encode())


def measure(bench: Bench) -> Section:
    section = Section(f"Big batches: SQS batch {BIG:,} against {SMALL:,}")
    handler, floor = events_handler(bench), Floor()
    bench.say(f"SQS batch of {BIG:,} and of {SMALL:,}, and the floor, taking turns")
    relay_small, relay_big, floor_runs = head_to_head(
        bench.fake,
        [
            ("cio-relay 1000", RELAY_AGENT, handler.run),
            ("cio-relay 10000", RELAY_AGENT, handler.run),
            ("floor", None, floor.run),
        ],
        (SMALL, BIG, SMALL),
        reps=bench.reps(5, 2),
    )
    bench.say(f"peak RSS of a fresh process handling a {BIG:,}-record batch")
    rss = startup.peak_rss(bench.env, BIG)
    timeout, memory_mb = function_limits()
    size = event_bytes(events_batch(BIG))

    section.lines += table(
        RUN_HEADER,
        [
            run_row(f"**cio-relay** EventsFunction, SQS batch {SMALL:,}", relay_small),
            run_row(f"**cio-relay** EventsFunction, SQS batch {BIG:,}", relay_big),
            run_row(f"floor: json.loads + model + json.dumps, {SMALL:,} calls", floor_runs),
        ],
    )
    speedup = paired(relay_big.events_per_second(), relay_small.events_per_second())
    floor_cpu = floor_runs.cpu_us_per_event()
    small_floor = paired(relay_small.cpu_us_per_event(), floor_cpu)
    big_floor = paired(relay_big.cpu_us_per_event(), floor_cpu)
    slowest = max(relay_big.walls())
    section.lines += [
        "",
        *table(
            ["quantity", RANGE],
            [
                [f"events/s at {BIG:,} ÷ at {SMALL:,}", show(Spread.of(speedup), 2, TIMES)],
                [f"CPU/event at {SMALL:,} ÷ floor", show(Spread.of(small_floor), 2, TIMES)],
                [f"CPU/event at {BIG:,} ÷ floor", show(Spread.of(big_floor), 2, TIMES)],
                [
                    f"wall time of one {BIG:,}-record invocation (s)",
                    show(Spread.of(relay_big.walls()), 3),
                ],
                [f"event of {BIG:,} records (bytes)", f"{size:,} of {INVOKE_PAYLOAD_LIMIT:,}"],
                [
                    f"peak RSS of a fresh process handling {BIG:,} records twice (MB)",
                    f"{rss['peak_mb']:.0f} of {memory_mb:.0f}",
                ],
            ],
        ),
    ]
    section.targets += [
        at_least(f"events/s, SQS batch {BIG:,} ÷ batch {SMALL:,}", speedup, SPEEDUP),
        at_most(f"CPU/event, SQS batch {SMALL:,} ÷ floor", small_floor, FLOOR_LIMIT),
        at_most(f"CPU/event, SQS batch {BIG:,} ÷ floor", big_floor, FLOOR_LIMIT),
        at_most(
            f"slowest {BIG:,}-record invocation ÷ function timeout ({timeout:g} s)",
            over([slowest], timeout),
            TIMEOUT_SHARE,
            unit="",
        ),
        at_most(
            f"event of {BIG:,} bench records ÷ the {INVOKE_PAYLOAD_LIMIT // 2**20} MB invocation limit",
            [size / INVOKE_PAYLOAD_LIMIT],
            1.0,
            unit="",
        ),
        at_most(
            f"peak RSS handling {BIG:,} records ÷ function memory ({memory_mb:g} MB)",
            over([rss["peak_mb"]], memory_mb),
            MEMORY_SHARE,
            unit="",
        ),
    ]
    return section


__all__ = ["function_limits", "measure"]
