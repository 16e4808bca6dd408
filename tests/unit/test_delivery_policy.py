"""The delivery table (docs/delivery.md) as pure functions: backoff_delay and decide."""

from __future__ import annotations

import pytest
from cio_relay.delivery import MAX_REQUEUES, Decision, Lineage, backoff_delay, decide
from cio_relay.errors import (
    AuthRejected,
    CioRelayError,
    ConfigurationError,
    CustomerIOTimeout,
    EnqueueFailed,
    InvalidRequest,
    NotAttempted,
    PayloadTooLarge,
    Permanent,
    RateLimited,
    Retryable,
    SendInProgress,
)
from cio_relay.settings import Settings, load_settings

TWELVE_HOURS = 43_200


class Recorder:
    """An rng that answers a fixed fraction of its range and remembers what it was asked."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return low + (high - low) * self.fraction


def policy(base: float = 10, cap: float = 100) -> Settings:
    return load_settings({"RETRY_BASE_SECONDS": str(base), "RETRY_CAP_SECONDS": str(cap)})


# --- backoff_delay ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receives", "ceiling"),
    [(0, 30), (1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 900), (20, 900), (200, 900)],
)
def test_backoff_delay_doubles_per_receive_up_to_the_cap(receives: int, ceiling: int) -> None:
    # GIVEN base 30 s, cap 900 s, and an rng that always draws the top of its range
    rng = Recorder(1.0)

    # WHEN the delay for the n-th receive is computed
    delay = backoff_delay(receives, base=30, cap=900, rng=rng)

    # THEN it is min(cap, base * 2^(n-1)), drawn by full jitter over [0, that]
    assert rng.calls == [(0, ceiling)]
    assert delay == ceiling


def test_backoff_delay_is_full_jitter_from_zero() -> None:
    # GIVEN an rng at the bottom and one in the middle of the range
    # WHEN the delay is computed for the third receive (ceiling 120 s)
    low = backoff_delay(3, base=30, cap=900, rng=Recorder(0.0))
    middle = backoff_delay(3, base=30, cap=900, rng=Recorder(0.5))

    # THEN jitter spans the whole range down to zero
    assert low == 0
    assert middle == 60


def test_backoff_delay_rounds_up_to_whole_seconds() -> None:
    # ChangeMessageVisibility takes whole seconds; a fraction is never rounded down to "now".
    assert backoff_delay(1, base=30, cap=900, rng=Recorder(0.01)) == 1
    assert backoff_delay(1, base=0.4, cap=900, rng=Recorder(1.0)) == 1


def test_backoff_delay_default_rng_stays_in_range() -> None:
    # GIVEN the real random source / WHEN many delays are drawn / THEN each is within [0, ceiling]
    delays = {backoff_delay(2, base=30, cap=900) for _ in range(200)}
    assert min(delays) >= 0
    assert max(delays) <= 60
    assert len(delays) > 10  # jittered, not constant


def test_backoff_delay_retry_after_wins_when_longer() -> None:
    # GIVEN a Retry-After longer than the jittered delay
    # WHEN the delay is computed
    delay = backoff_delay(1, base=30, cap=900, retry_after=120.2, rng=Recorder(1.0))

    # THEN Customer.io's wish is honoured, rounded up
    assert delay == 121


def test_backoff_delay_retry_after_ignored_when_shorter() -> None:
    assert backoff_delay(3, base=30, cap=900, retry_after=5, rng=Recorder(1.0)) == 120


@pytest.mark.parametrize(
    ("base", "cap", "retry_after"),
    [(30, 43_200, 10**7), (43_200, 43_200, None), (10**6, 10**6, None), (30, 900, 86_400.0)],
)
def test_backoff_delay_never_exceeds_twelve_hours(base: float, cap: float, retry_after: float | None) -> None:
    # GIVEN settings or a Retry-After that ask for more than SQS allows
    # WHEN the delay is computed
    delay = backoff_delay(30, base=base, cap=cap, retry_after=retry_after, rng=Recorder(1.0))

    # THEN it is clamped to SQS's 12-hour visibility maximum
    assert delay == TWELVE_HOURS


def test_backoff_delay_zero_cap_means_at_once() -> None:
    rng = Recorder(1.0)
    assert backoff_delay(3, base=30, cap=0, rng=rng) == 0
    assert rng.calls == []


# --- decide ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Permanent("POST /v1/track: Customer.io answered 400: event is required", status=400), "400"),
        (Permanent("not found", status=404), "404"),
        (Permanent("too large", status=413), "413"),
        (InvalidRequest("userId or anonymousId is required", field="userId"), "400"),
        (PayloadTooLarge("call is 40000 bytes", field="body"), "413"),
    ],
)
def test_decide_permanent_goes_to_dead_letter_at_once(error: CioRelayError, status: str) -> None:
    # GIVEN a failure that cannot succeed if sent again
    # WHEN the delivery policy decides, even on the first receive
    decision = decide(error, 1, policy())

    # THEN the record is dead-lettered now, with the reason and status
    assert decision.action == "dead_letter"
    assert decision.delay == 0
    assert decision.status == status
    assert decision.reason == str(error)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Retryable("503", status=503), "503"),
        (Retryable("500", status=500), "500"),
        (Retryable("408", status=408), "408"),
        (Retryable("connection dropped"), "customerio_unavailable"),
        (RateLimited("429", status=429), "429"),
        (CustomerIOTimeout("no answer"), "customerio_timeout"),
        (AuthRejected("401", status=401), "401"),
        (AuthRejected("403", status=403), "403"),
        (ConfigurationError("no App API credential"), "configuration_error"),
        (EnqueueFailed("SQS refused"), "enqueue_failed"),
    ],
)
def test_decide_retryable_and_auth_back_off(error: CioRelayError, status: str) -> None:
    # GIVEN a failure that may succeed later (auth: operators fix keys; nothing is dropped)
    # WHEN the delivery policy decides on the third receive (ceiling 10 * 2^2 = 40 s)
    decisions = [decide(error, 3, policy(base=10, cap=100)) for _ in range(50)]

    # THEN the record is retried later, with a jittered delay within the ceiling
    assert {d.action for d in decisions} == {"retry"}
    assert all(0 <= d.delay <= 40 for d in decisions)
    assert decisions[0].status == status
    assert decisions[0].reason == str(error)


def test_decide_retry_after_longer_than_backoff_wins() -> None:
    # GIVEN a 429 whose Retry-After (500 s) exceeds the cap (100 s)
    error = RateLimited("429", status=429, retry_after=500)

    # WHEN the policy decides
    decision = decide(error, 1, policy(base=10, cap=100))

    # THEN the record waits exactly as long as Customer.io asked
    assert decision == Decision("retry", 500, str(error), "429")


def test_decide_cap_bounds_the_delay_on_many_receives() -> None:
    decisions = [decide(Retryable("503", status=503), 40, policy(base=10, cap=100)) for _ in range(50)]
    assert all(0 <= d.delay <= 100 for d in decisions)


def test_decide_not_attempted_retries_at_once() -> None:
    # GIVEN a record the invocation had no time to send
    # WHEN the policy decides, even on a late receive
    decision = decide(NotAttempted("not attempted in this invocation"), 4, policy())

    # THEN it comes back at once: it never failed
    assert (decision.action, decision.delay) == ("retry", 0)
    assert decision.status == "not_attempted"


def test_decide_unexpected_error_retries_without_leaking_its_message() -> None:
    # GIVEN a bug, whose message could hold anything (a key, an email)
    error = KeyError("ada@example.com")

    # WHEN the policy decides
    decision = decide(error, 1, policy(base=10, cap=100))

    # THEN nothing is dropped (backoff), and the reason names only the type
    assert decision.action == "retry"
    assert 0 <= decision.delay <= 10
    assert decision.reason == "unexpected KeyError"
    assert decision.status == "KeyError"
    assert "ada@example.com" not in decision.reason


@pytest.mark.parametrize(
    "error", [Retryable("503", status=503), AuthRejected("401", status=401), RuntimeError()]
)
def test_decide_last_allowed_receive_dead_letters_with_the_reason(error: BaseException) -> None:
    # GIVEN the queue's maxReceiveCount is 5 and this is the 5th receive
    settings = load_settings({"MAX_RECEIVE_COUNT": "5"})

    # WHEN the record fails again
    decision = decide(error, 5, settings)

    # THEN the function dead-letters it itself, so the DLQ copy says why (SQS's redrive would not)
    assert decision.action == "dead_letter"
    assert decision.reason.startswith("gave up after 5 receives: ")


def test_decide_before_the_last_receive_still_backs_off() -> None:
    # GIVEN maxReceiveCount 5 and the 4th receive
    settings = load_settings({"MAX_RECEIVE_COUNT": "5", "RETRY_BASE_SECONDS": "10"})

    # WHEN a retryable failure happens
    decision = decide(Retryable("503", status=503), 4, settings)

    # THEN it is retried later, not dead-lettered
    assert decision.action == "retry"
    assert decision.delay <= 80


# --- the last receive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        NotAttempted("not attempted in this invocation"),
        SendInProgress("an email with this key is being sent"),
    ],
    ids=["not-attempted", "sent-elsewhere"],
)
def test_decide_re_enqueues_a_healthy_record_on_its_last_receive(error: CioRelayError) -> None:
    # GIVEN maxReceiveCount 10 and a record on its 10th receive that was not (or is being) sent
    settings = load_settings({"MAX_RECEIVE_COUNT": "10"})

    # WHEN the delivery policy decides, for a first message and for a copy re-enqueued 3 times
    first = decide(error, 10, settings)
    worn = decide(error, 10, settings, lineage=Lineage("m-1", earlier_receives=30, requeues=MAX_REQUEUES))

    # THEN the first is re-enqueued; the copy that used up its re-enqueues is dead-lettered, with why
    assert first.action == "requeue"
    assert worn.action == "dead_letter"
    assert worn.reason.endswith(f"in 40 receives and {MAX_REQUEUES} re-enqueues")


def test_decide_backoff_counts_the_receives_of_the_whole_line() -> None:
    # GIVEN a re-enqueued copy on its first receive, after 10 receives of the message before it
    settings = load_settings({"RETRY_BASE_SECONDS": "10", "RETRY_CAP_SECONDS": "43200"})
    lineage = Lineage("m-1", earlier_receives=10, requeues=1)

    # WHEN it fails retryably, many times (jitter draws anywhere up to the ceiling)
    delays = [decide(Retryable("503", status=503), 1, settings, lineage=lineage).delay for _ in range(200)]

    # THEN the ceiling is that of an 11th receive (10 * 2**10), not of a first one (10)
    assert max(delays) > 10
    assert max(delays) <= 10 * 2**10
