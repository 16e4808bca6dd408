"""What every measuring module gets: the fake Customer.io, the moto server, the stack's environment.

A measuring module is a function `measure(bench: Bench) -> Section`, listed in bench/__main__.py's
MEASUREMENTS. It takes turns with what it is compared with (`take_turns` below), turns the runs into
ratios run by run (`bench.results.paired`), and returns its tables and targets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench.child import MotoProcess
from bench.fake import FakeProcess

T = TypeVar("T")


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    fake: FakeProcess
    moto: MotoProcess
    env: dict[str, str]  # the environment a fresh process needs to run a handler against this stack
    quick: bool = False
    cache: dict[str, object] = field(default_factory=dict)

    def reps(self, full: int, quick: int | None = None) -> int:
        """Timed runs per contender: `full`, or fewer (`quick`, default a third) with --quick."""
        return max(2, quick if quick is not None else full // 3) if self.quick else full

    def say(self, message: str) -> None:
        say(message)

    def once(self, key: str, make: Callable[[], T]) -> T:
        """A value shared by several measuring modules (a warm handler, a floor), made on first use."""
        if key not in self.cache:
            self.cache[key] = make()
        value: T = self.cache[key]  # type: ignore[assignment]
        return value


def take_turns(contenders: Sequence[Callable[[], T]], reps: int, warmups: int = 1) -> list[list[T]]:
    """`warmups` + `reps` rounds; each round runs every contender once, the order alternating
    (A B, B A, ...), so that noise from other processes falls on all of them alike.

    Returns each contender's timed results (warm-up rounds left out), in round order: result i of
    one contender ran next to result i of the others.
    """
    found: list[list[T]] = [[] for _ in contenders]
    for index in range(warmups + reps):
        order = list(enumerate(contenders))
        for position, run in order if index % 2 else reversed(order):
            result = run()
            if index >= warmups:
                found[position].append(result)
    return found
