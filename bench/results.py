"""What one `make bench` run measured: plain data, shared by the measuring and the reporting modules."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    """Wall and CPU seconds of one run of `events` events (see `summarise`), and what the fake saw."""

    label: str
    events: int
    wall: float
    cpu: float
    requests_per_event: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu / self.events * 1e6 if self.events else 0.0


def summarise(
    label: str, events_per_run: int, samples: list[tuple[float, float]], requests_per_event: float
) -> Run:
    """One Run from (wall, CPU) samples: the fastest wall time and the median CPU time.

    On a shared machine other processes only ever slow a run down, and a handler that sleeps 25 ms on
    Customer.io and then wants the CPU back is stretched most; the fastest run is the best estimate of
    what the code itself costs (the reasoning of `timeit`). CPU time is far less disturbed: median.
    """
    return Run(
        label=label,
        events=events_per_run,
        wall=min(s[0] for s in samples),
        cpu=statistics.median(s[1] for s in samples),
        requests_per_event=requests_per_event,
    )


@dataclass(frozen=True)
class ColdStart:
    baseline_ms: float
    handlers_ms: dict[str, float]  # function name -> median import ms
    runs: int


@dataclass
class Results:
    """Everything one `make bench` run measured; missing pieces stay None and show as n/a / SKIP."""

    date: str
    machine: str
    versions: dict[str, str]
    latency_ms: float
    relay: dict[int, Run] = field(default_factory=dict)
    cdp_batch: dict[int, Run] = field(default_factory=dict)
    customerio: Run | None = None
    cdp_sync: Run | None = None
    floor_us: float | None = None
    email: dict[str, Run] | None = None
    cold: ColdStart | None = None
    rss: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    load_average: tuple[float, float] | None = None  # 1-minute load average at the start and at the end
