"""The per-record shortcuts of EventsQueue delivery give exactly what the long way gives.

Each shortcut skips work for the usual call (re-serialising a validated call, walking its limits, the
cyclic collector during a batch); these tests hold them to the result of the work they skip.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from cio_relay.delivery import collector_paused
from cio_relay.forwarding import _CALL, parse_queue_message
from cio_relay.limits import _plainly_within, problems
from cio_relay.models.pipelines import wire_of

from bench.workload import events, queue_body
from tests.support import sqs_event

CALLS: list[dict[str, Any]] = [
    *(json.loads(queue_body(e)) for e in events(4)),
    {"type": "identify", "userId": "u", "traits": {"nested": {"a": [1, 2.5, None, True]}}, "extra": "kept"},
    {
        "type": "track",
        "anonymousId": "a",
        "event": "x",
        "properties": {},
        "messageId": "m",
        "timestamp": None,
    },
    {"type": "group", "groupId": "g", "userId": "u", "traits": {"n": 10**30}},
    {"type": "alias", "previousId": "p", "userId": "u"},
    {"type": "page", "userId": "u", "name": "home", "context": {"ip": "1.2.3.4"}},
    # What validation changes: numeric ids and fields under their Python names.
    {"type": "identify", "userId": 42, "traits": {"plan": "pro"}},
    {"type": "identify", "user_id": "u", "traits": {}},
    {"type": "track", "userId": "u", "event": "x", "message_id": "m"},
    {"type": "group", "userId": "u", "group_id": 7},
    {"type": "alias", "previous_id": "p", "userId": "u"},
]


@pytest.mark.parametrize("sent", CALLS, ids=lambda c: ",".join(sorted(c)))
def test_wire_of_is_what_wire_gives(sent: dict[str, Any]) -> None:
    # GIVEN a call as a producer sent it, validated
    call = _CALL.validator.validate_python(json.loads(json.dumps(sent)))

    # WHEN its wire body is taken the short way
    # THEN it is exactly the long way's
    assert wire_of(call, json.loads(json.dumps(sent))) == call.wire()


def test_a_queue_body_with_nan_is_forwarded_as_the_model_serialises_it() -> None:
    # GIVEN an EventsQueue body holding NaN and Infinity (json.loads accepts them)
    body = '{"type":"track","userId":"u","event":"x","properties":{"a":NaN,"b":Infinity}}'
    record = sqs_event([body], queue_arn="arn:aws:sqs:us-east-1:123456789012:q")["Records"][0]

    # WHEN it is parsed for delivery
    calls, _ = parse_queue_message(SQSRecord(record))

    # THEN the values are what validation makes of them (null), never NaN on the wire
    assert calls[0]["properties"] == {"a": None, "b": None}


LIMIT_CASES: list[dict[str, Any]] = [
    {"type": "identify", "userId": "u" * 151},
    {"type": "identify", "userId": "é" * 76},  # 152 bytes in UTF-8
    {"type": "alias", "userId": "u", "previousId": "p" * 200},
    {"type": "group", "groupId": "g" * 151},
    {"type": "track", "userId": "u", "event": "e" * 101},
    {"type": "track", "userId": "u", "event": "日" * 34},
    {"type": "identify", "userId": "u", "traits": {"k" * 151: 1}},
    {"type": "identify", "userId": "u", "traits": {"v": "x" * 1001}},
    {"type": "identify", "userId": "u", "traits": {"v": "ü" * 501}},
    {"type": "identify", "userId": "u", "traits": {"v": 10**1001}},
    {"type": "identify", "userId": "u", "traits": {"v": ["x" * 600, "y" * 600]}},
    {"type": "identify", "userId": "u", "traits": {f"k{i}": i for i in range(301)}},
    {"type": "group", "groupId": "g", "traits": {"v": {"deep": "z" * 1000}}},
]


@pytest.mark.parametrize("call", LIMIT_CASES + CALLS, ids=lambda c: json.dumps(c)[:60])
def test_plainly_within_never_passes_a_call_over_a_limit(call: dict[str, Any]) -> None:
    # THEN the shortcut says "within" only for calls the full check finds nothing wrong with
    assert not (_plainly_within(call) and list(problems(call)))


def test_plainly_within_passes_the_usual_calls() -> None:
    # GIVEN the bench workload's calls (short strings and numbers)
    # THEN the shortcut decides them without the full walk
    assert all(_plainly_within(json.loads(queue_body(e))) for e in events(20))


@pytest.mark.parametrize("enabled", [True, False])
def test_collector_is_paused_during_a_batch_and_restored_after(enabled: bool) -> None:
    # GIVEN the collector on (or off, as a test runner might have it)
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        # WHEN a batch runs, even one that fails
        seen: list[bool] = []

        def batch() -> None:
            with collector_paused():
                seen.append(gc.isenabled())
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            batch()
        assert seen == [False]

        # THEN the collector is as it was
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
