"""The head-to-head runs against the fake Customer.io: contenders take turns, then every event is checked.

Machines here are shared and noisy, so contenders take turns (A B, B A, A B, ...) against one fake
Customer.io, which counts each one's requests by User-Agent; the ratios then compare runs that saw
the same load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from bench.context import take_turns
from bench.fake import FakeProcess
from bench.relay import RELAY_AGENT
from bench.results import Run

CDP_AGENT = "analytics-python"
CUSTOMERIO_AGENT = "Customer.io Python Client"

# label, User-Agent (None: sends nothing to Customer.io, e.g. the floor), run(n) -> (wall, CPU seconds)
Contender = tuple[str, str | None, Callable[[int], tuple[float, float]]]


def head_to_head(
    fake: FakeProcess, contenders: list[Contender], count: int | Sequence[int], reps: int
) -> list[Run]:
    """1 warm-up + `reps` runs of `count` events per contender (or count[i] for contender i),
    alternating who goes first.

    Each run's requests and events are read from the fake's counts for the contender's User-Agent
    just before and after it (outside the timed part), so contenders may share a User-Agent; every
    event of every run (warm-up included) must have arrived.
    """
    counts = [count] * len(contenders) if isinstance(count, int) else list(count)
    seen = [{"requests": 0, "events": 0, "errors": 0} for _ in contenders]

    def counted(position: int) -> tuple[float, float]:
        _, agent, run = contenders[position]
        if agent is None:
            return run(counts[position])
        before = fake.stats(agent)
        result = run(counts[position])
        after = fake.stats(agent)
        for key in seen[position]:
            seen[position][key] += after[key] - before[key]
        return result

    samples = take_turns([partial(counted, i) for i in range(len(contenders))], reps)
    runs = []
    for (label, agent, _), measured, n, got in zip(contenders, samples, counts, seen, strict=True):
        total = n * (1 + reps)
        if agent is not None and (got["errors"] or got["events"] != total):
            raise RuntimeError(
                f"{label} ({n} events): the fake Customer.io saw {got}, expected {total} events"
            )
        runs.append(Run(label, n, tuple(measured), got["requests"] / total if agent else 0.0))
    return runs


__all__ = ["CDP_AGENT", "CUSTOMERIO_AGENT", "RELAY_AGENT", "Contender", "head_to_head"]
