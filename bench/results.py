"""What a `make bench` run measured, as plain data: runs, spreads, targets and report sections.

Nothing here times anything. A measuring module (bench/<subject>.py) returns a `Section`: the tables
it wants printed and its `Target`s; bench/report.py renders every section into one report.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
RANGE = f"median (lowest{DASH}highest)"


@dataclass(frozen=True)
class Spread:
    """Lowest, median and highest of one quantity over the runs that measured it."""

    low: float
    median: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        found = sorted(values)
        if not found:
            return None
        return cls(found[0], statistics.median(found), found[-1], len(found))

    def show(self, digits: int = 2, suffix: str = "") -> str:
        """`1.23x (1.10-1.41)` with the multiplication sign and an en dash: median (lowest-highest)."""
        low, high = _num(self.low, digits), _num(self.high, digits)
        return f"{_num(self.median, digits)}{suffix} ({low}{DASH}{high})"


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Run-by-run ratios: run i of one contender over run i of the other (they took turns)."""
    return [a / b for a, b in zip(numerators, denominators, strict=False) if b]


def over(values: Sequence[float], denominator: float | None) -> list[float]:
    """Each value over one fixed denominator (an empty list when there is none)."""
    return [v / denominator for v in values] if denominator else []


@dataclass(frozen=True)
class Run:
    """`events` events per run; one (wall seconds, CPU seconds) sample per timed run, in turn order."""

    label: str
    events: int
    samples: tuple[tuple[float, float], ...]
    requests_per_event: float = 0.0

    def events_per_second(self) -> list[float]:
        return [self.events / wall for wall, _ in self.samples if wall > 0]

    def cpu_us_per_event(self) -> list[float]:
        return [cpu / self.events * 1e6 for _, cpu in self.samples] if self.events else []

    def walls(self) -> list[float]:
        return [wall for wall, _ in self.samples]


@dataclass(frozen=True)
class Target:
    """A goal and this run's measurements of it. The verdict is on the median run."""

    name: str
    goal: str
    spread: Spread | None  # None: could not be measured in this run
    passed: bool | None

    @property
    def verdict(self) -> str:
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"


def at_most(name: str, values: Iterable[float], limit: float, unit: str = TIMES) -> Target:
    spread = Spread.of(values)
    passed = None if spread is None else spread.median <= limit + 1e-12
    return Target(name, f"≤ {limit:g}{unit}", spread, passed)


def at_least(name: str, values: Iterable[float], limit: float, unit: str = TIMES) -> Target:
    spread = Spread.of(values)
    passed = None if spread is None else spread.median >= limit - 1e-12
    return Target(name, f"≥ {limit:g}{unit}", spread, passed)


@dataclass
class Section:
    """One subject of the report: its markdown (tables, sentences), its targets and notes."""

    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> list[str]:
    """A markdown table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def show(spread: Spread | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if spread is None else spread.show(digits, suffix)


def median(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None
