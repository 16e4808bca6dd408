"""The head-to-head runs: each cio-relay run interleaved with the SDK run it is compared with.

Machines here are shared and noisy, so contenders take turns (A B, B A, A B, ...) against one fake
Customer.io, which counts each one's requests by User-Agent; the ratios then compare runs that saw
the same load.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.fake import FakeProcess
from bench.relay import RELAY_AGENT, check_delivered
from bench.results import Run, summarise

CDP_AGENT = "analytics-python"
CUSTOMERIO_AGENT = "Customer.io Python Client"

Contender = tuple[str, str, Callable[[int], tuple[float, float]]]  # label, User-Agent, run(n)


def take_turns(fake: FakeProcess, contenders: list[Contender], count: int, reps: int) -> list[Run]:
    """1 warm-up + `reps` runs of `count` events per contender, alternating who goes first.

    The contenders must send with different User-Agents; each one's requests/event comes from the
    fake's counts, after checking that every event of every run (warm-up included) arrived.
    """
    fake.reset()
    samples: list[list[tuple[float, float]]] = [[] for _ in contenders]
    for index in range(1 + reps):
        order = list(enumerate(contenders))
        for position, (_, _, run) in order if index % 2 else reversed(order):
            wall, cpu = run(count)
            if index:
                samples[position].append((wall, cpu))
    runs = []
    total = count * (1 + reps)
    for (label, agent, _), measured in zip(contenders, samples, strict=True):
        stats = check_delivered(fake, agent, total, f"{label} ({count} events)")
        runs.append(summarise(label, count, measured, stats["requests"] / total))
    return runs


__all__ = ["CDP_AGENT", "CUSTOMERIO_AGENT", "RELAY_AGENT", "Contender", "take_turns"]
