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
from cio_relay.cio import build_customerio
from cio_relay.cio.pipelines import encode
from cio_relay.delivery import collector_paused
from cio_relay.forwarding import _CALL, _parse, parse_queue_message
from cio_relay.limits import _plainly_within, problems
from cio_relay.models.pipelines import MAX_CALL_BYTES, wire_of
from cio_relay.settings import load_settings

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


# Bodies as producers write them, and whether each can be forwarded as it came (the text shortcut).
BODIES: list[tuple[str, bool]] = [
    *((queue_body(e), True) for e in events(4)),  # no messageId: one is derived and added
    ('{"type":"identify","userId":"u","traits":{}}', True),  # no timestamp either: SentTimestamp added
    ('{"type":"track","userId":"u","event":"x","messageId":"m-1","timestamp":"2026-01-01T00:00:00Z"}', True),
    ('{\n  "type": "identify",\n  "userId": "u",\n  "traits": {"plan": "pro"}\n}\n  ', True),
    ('{ "type" : "track" , "userId" : "u" , "event" : "x" }', True),
    ('{"type":"identify","userId":"u","traits":{"q":"say \\"hi\\"","p":"a\\\\b","n":"1\\n2"}}', True),
    ('{"type":"identify","userId":"u","traits":{"plan":"NaNa"}}', False),  # looks like NaN: the long way
    ('{"type":"identify","userId":"u","traits":{"name":"Jos\\u00e9"}}', False),  # an escape: re-encoded
    ('{"type":"track","userId":"u","event":"x","messageId":null,"timestamp":null}', False),  # sent as null
    ('{"type":"identify","userId":42,"traits":{}}', False),  # validation makes the id a string
    ('{"type":"identify","user_id":"u","traits":{}}', False),  # a field under its Python name
    ('{"type":"track","userId":"u","event":"x","properties":{"a":NaN}}', False),
    ('{"batch":[{"type":"identify","userId":"u"},{"type":"track","userId":"u","event":"x"}]}', False),
]
PIPELINES = build_customerio(
    load_settings({"CUSTOMERIO_PIPELINES_API_KEY": "k", "CUSTOMERIO_PIPELINES_URL": "http://127.0.0.1:9"})
).pipelines


def refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON Customer.io can read")


def record_of(body: str) -> SQSRecord:
    return SQSRecord(sqs_event([body], queue_arn="arn:aws:sqs:us-east-1:123456789012:q")["Records"][0])


@pytest.mark.parametrize(("body", "as_it_came"), BODIES, ids=lambda b: str(b)[:50])
def test_a_call_forwarded_as_it_came_is_the_call_the_model_gives(body: str, as_it_came: bool) -> None:
    # GIVEN an EventsQueue body, parsed for delivery the short way
    record = record_of(body)
    calls, _, text = _parse(record)

    # WHEN its bytes for /v1/batch are made
    sent = [PIPELINES.item(call, text if len(calls) == 1 else None).body for call in calls]

    # THEN the producer's own text is used exactly when it is safe to
    assert (text is not None) is as_it_came
    # AND what goes to Customer.io is the long way's call: the model's serialisation of the body, with
    # the messageId and timestamp the relay gives every call
    for index, (call, wire) in enumerate(zip(calls, sent, strict=True)):
        data = json.loads(body)
        long_way = _CALL.validator.validate_python(data["batch"][index] if "batch" in data else data).wire()
        long_way |= {"messageId": call["messageId"], "timestamp": call["timestamp"]}
        assert json.loads(wire, parse_constant=refuse) == json.loads(encode(long_way)) == call


def test_a_call_is_given_a_message_id_and_time_whichever_way_it_is_forwarded() -> None:
    # GIVEN a plain body without messageId or timestamp
    calls, _, text = _parse(record_of('{"type":"identify","userId":"u","traits":{}}'))

    # THEN its text carries the same derived messageId and SentTimestamp as the call
    assert text is not None
    assert json.loads(text) == calls[0]
    assert calls[0]["messageId"]
    assert calls[0]["timestamp"] == "2023-11-14T22:13:20.000Z"


def test_a_lone_surrogate_is_never_forwarded_as_it_came() -> None:
    # GIVEN a body holding an escaped lone surrogate (valid JSON text, not valid Unicode)
    calls, _, text = _parse(record_of('{"type":"identify","userId":"u","traits":{"x":"\\ud800"}}'))

    # THEN it takes the long way, where encoding it refuses the call
    assert text is None
    with pytest.raises(UnicodeEncodeError):
        PIPELINES.item(calls[0], text)


def test_a_spacious_body_over_32_kb_is_sent_compact_when_that_fits() -> None:
    # GIVEN a body over 32 KB only because of its indentation
    traits = {f"t{k}": "x" * 900 for k in range(33)}
    body = json.dumps({"type": "identify", "userId": "u", "messageId": "m", "traits": traits}, indent=400)
    calls, _, text = _parse(record_of(body))
    assert text is not None
    assert len(text) > MAX_CALL_BYTES

    # WHEN its bytes are made
    item = PIPELINES.item(calls[0], text)

    # THEN it is encoded compactly (within the limit), not refused
    assert len(item.body) <= MAX_CALL_BYTES
    assert json.loads(item.body) == calls[0]


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
