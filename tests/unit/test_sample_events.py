"""The SQS sample events in events/ look like what Lambda delivers: md5OfBody is the body's MD5."""

from __future__ import annotations

import hashlib

import pytest

from tests.support import EVENTS_DIR, load_event

SQS_SAMPLES = sorted(p.name for p in EVENTS_DIR.glob("*.json") if "Records" in load_event(p.name))


def test_every_sqs_sample_is_found() -> None:
    # GIVEN the samples, THEN both queues have SQS samples (the check below would pass on none)
    assert "email_sqs_send.json" in SQS_SAMPLES
    assert "events_sqs_mixed.json" in SQS_SAMPLES


@pytest.mark.parametrize("name", SQS_SAMPLES)
def test_md5_of_body_is_the_md5_of_the_body(name: str) -> None:
    # GIVEN an SQS sample event
    records = load_event(name)["Records"]

    # THEN every record carries the MD5 that SQS computes over the body's UTF-8 bytes
    assert records
    for record in records:
        assert record["eventSource"] == "aws:sqs"
        expected = hashlib.md5(record["body"].encode(), usedforsecurity=False).hexdigest()
        assert record["md5OfBody"] == expected, (name, record["messageId"])
