"""The `make bench` harness pieces, checked for correctness only: nothing here is timed."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cio_relay.forwarding import MESSAGE_ID_NAMESPACE, derived_message_id
from cio_relay.models.pipelines import Call
from pydantic import TypeAdapter

from bench.fake import APP_KEY, PIPELINES_KEY, SITE_ID, TRACK_KEY, BenchFake
from bench.report import TIMES, render, targets, update_readme
from bench.results import ColdStart, Results, Run, summarise
from bench.sdks import SDKS
from bench.workload import events, events_batch, queue_body


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(
    fake: BenchFake, method: str, path: str, body: Any = None, auth: str | None = None, agent: str = "t/1"
) -> int:
    headers = {"Content-Type": "application/json", "X-Strict-Mode": "1", "User-Agent": agent}
    if auth:
        headers["Authorization"] = auth
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{fake.url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stats(fake: BenchFake) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"{fake.url}/__bench__/stats", timeout=5) as answer:
        data: dict[str, dict[str, int]] = json.loads(answer.read())
    return data


@pytest.fixture
def fake() -> Iterator[BenchFake]:
    server = BenchFake(latency=0.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(events_per_run: int, events_per_second: float, cpu_us: float, requests_per_event: float) -> Run:
    return Run(
        label="x",
        events=events_per_run,
        wall=events_per_run / events_per_second,
        cpu=cpu_us * events_per_run / 1e6,
        requests_per_event=requests_per_event,
    )


def results(**overrides: Any) -> Results:
    values: dict[str, Any] = {
        "date": "2026-01-01 00:00 UTC",
        "machine": "test box",
        "versions": {"cio-relay": "0.1.0"},
        "latency_ms": 25.0,
        "relay": {
            10: run(10, 350, 170, 0.1),
            100: run(100, 4000, 40, 0.01),
            1000: run(1000, 9000, 35, 0.001),
        },
        "cdp_batch": {
            10: run(10, 19, 300, 0.1),
            100: run(100, 2000, 80, 0.01),
            1000: run(1000, 3000, 50, 0.01),
        },
        "customerio": run(100, 40, 1200, 1.0),
        "cdp_sync": run(100, 36, 1300, 1.0),
        "floor_us": 10.0,
        "cold": ColdStart(baseline_ms=200.0, handlers_ms={"events": 240.0, "email": 250.0}, runs=5),
        "rss": {"after_import_mb": 48.0, "peak_mb": 60.0},
    }
    values.update(overrides)
    return Results(**values)


def verdicts(r: Results) -> dict[str, str]:
    return {t.name: t.verdict for t in targets(r)}


def test_bench_fake_counts_requests_and_events_per_sender(fake: BenchFake) -> None:
    # GIVEN a /v1/batch of three calls from cio-relay and two Track API requests from the `customerio` SDK
    batch = {"batch": [{"type": "track", "userId": f"u{i}", "event": "order_completed"} for i in range(3)]}
    sdk = "Customer.io Python Client/3.2.0"

    # WHEN they reach the bench fake
    statuses = [
        call(fake, "POST", "/v1/batch", batch, basic(PIPELINES_KEY), agent="cio-relay/0.1.0"),
        call(fake, "PUT", "/api/v1/customers/u1", {"plan": "pro"}, basic(SITE_ID, TRACK_KEY), agent=sdk),
        call(
            fake, "POST", "/api/v1/customers/u1/events", {"name": "x"}, basic(SITE_ID, TRACK_KEY), agent=sdk
        ),
    ]

    # THEN each is accepted and counted under its sender (User-Agent up to the version)
    assert statuses == [200, 200, 200]
    assert stats(fake) == {
        "cio-relay": {"requests": 1, "events": 3, "errors": 0},
        "Customer.io Python Client": {"requests": 2, "events": 2, "errors": 0},
    }


def test_bench_fake_counts_rejected_requests_as_errors_not_events(fake: BenchFake) -> None:
    # GIVEN a batch with the wrong key and a send with the App key
    call(fake, "POST", "/v1/batch", {"batch": [{"type": "identify", "userId": "u"}]}, basic("wrong"))
    email = {"transactional_message_id": 7, "to": "a@example.com", "identifiers": {"id": "u"}}
    call(fake, "POST", "/v1/send/email", email, f"Bearer {APP_KEY}")

    # WHEN the bench reads its counts, then resets them
    before = stats(fake)
    call(fake, "POST", "/__bench__/reset")
    after = stats(fake)

    # THEN the 401 is an error and carries no event; control calls are never counted
    assert before == {"t": {"requests": 2, "events": 1, "errors": 1}}
    assert after == {}


def test_workload_is_mixed_identify_track_and_valid_for_cio_relay() -> None:
    # GIVEN the bench workload of 10 calls
    made = events(10)

    # WHEN it is turned into EventsQueue records
    batch = events_batch(10)

    # THEN it alternates identify/track, every body is a valid Pipelines call, and records are SQS records
    assert [e["type"] for e in made[:4]] == ["identify", "track", "identify", "track"]
    adapter = TypeAdapter[Any](Call)
    for event in made:
        adapter.validate_python(json.loads(queue_body(event)))
    assert len(batch["Records"]) == 10
    assert {r["eventSource"] for r in batch["Records"]} == {"aws:sqs"}


def test_run_computes_events_per_second_and_cpu_per_event() -> None:
    # GIVEN a run of 100 events taking 0.05 s of wall time and 0.004 s of CPU
    measured = Run(label="x", events=100, wall=0.05, cpu=0.004, requests_per_event=0.01)

    # THEN
    assert measured.events_per_second == pytest.approx(2000)
    assert measured.cpu_us_per_event == pytest.approx(40)


def test_report_passes_every_target_when_numbers_meet_them() -> None:
    # GIVEN numbers that meet every target
    r = results()

    # WHEN the targets are evaluated
    found = verdicts(r)

    # THEN all pass, and the ratios are cio-relay over the other contender
    assert set(found.values()) == {"PASS"}
    by_name = {t.name: t.measured for t in targets(r)}
    assert by_name["events/s ÷ CDP batching events/s, batch 100"] == pytest.approx(2.0)
    assert by_name["events/s ÷ CDP batching events/s, batch 1000"] == pytest.approx(3.0)
    assert by_name["events/s ÷ `customerio` loop events/s, batch 100"] == pytest.approx(100.0)
    assert by_name["handler CPU/event ÷ CDP batching CPU/event, batch 100"] == pytest.approx(0.5)
    assert by_name["cold import of functions/events/app.py ÷ boto3 + 3 clients"] == pytest.approx(1.2)


def test_report_fails_the_targets_that_are_missed() -> None:
    # GIVEN too many requests at 1000, a slow batch of 100, a slow cold import and a fat process
    r = results(
        relay={
            10: run(10, 350, 170, 0.1),
            100: run(100, 1900, 90, 0.01),
            1000: run(1000, 7000, 35, 0.003),
        },
        cold=ColdStart(baseline_ms=200.0, handlers_ms={"events": 270.0, "email": 250.0}, runs=5),
        rss={"after_import_mb": 90.0, "peak_mb": 101.0},
    )

    # WHEN the targets are evaluated
    found = verdicts(r)

    # THEN exactly those fail
    assert {name for name, verdict in found.items() if verdict == "FAIL"} == {
        "Customer.io requests per event, SQS batch 1000",
        "handler CPU/event ÷ CDP batching CPU/event, batch 100",
        "events/s ÷ CDP batching events/s, batch 100",
        "events/s ÷ `customerio` loop events/s, batch 100",
        "cold import of functions/events/app.py ÷ boto3 + 3 clients",
        "peak RSS handling a 100-record batch (MB)",
    }
    assert "| peak RSS handling a 100-record batch (MB) | ≤ 100 | 101.000 | **FAIL** |" in render(r)


def test_report_skips_what_was_not_measured() -> None:
    # GIVEN a run where the SDKs could not be installed and nothing else ran
    r = Results(date="d", machine="m", versions={}, latency_ms=25.0, notes=["customerio SDK not measured"])

    # WHEN it is evaluated and rendered
    found = verdicts(r)
    text = render(r)

    # THEN every target is SKIP (never PASS), and the note is printed
    assert set(found.values()) == {"SKIP"}
    assert "n/a" in text
    assert "- customerio SDK not measured" in text


def test_report_table_shows_machine_versions_and_ratios() -> None:
    # GIVEN a full set of numbers
    text = render(results())

    # THEN the table names the machine and versions and shows each ratio row per batch size
    assert "Machine: test box. Versions: cio-relay 0.1.0." in text
    assert f"| events/s ÷ CDP batching | 18.42{TIMES} | 2.00{TIMES} | 3.00{TIMES} |" in text
    assert f"| CPU/event ÷ floor of the work | 17.00{TIMES} | 4.00{TIMES} | 3.50{TIMES} |" in text
    assert "| **cio-relay** EventsFunction, SQS batch 100 | 100 | 4,000 | 0.010 | 40.0 |" in text


def test_update_readme_replaces_only_between_the_markers(tmp_path: Path) -> None:
    # GIVEN a README with the bench markers, and one without
    marked = tmp_path / "README.md"
    marked.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\noutro\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")

    # WHEN the report is written into both
    changed = update_readme("new table\n", marked)
    unchanged = update_readme("new table\n", plain)

    # THEN only the marked README changed, and only between its markers
    assert (changed, unchanged) == (True, False)
    assert marked.read_text() == "intro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\noutro\n"
    assert plain.read_text() == "no markers\n"


@pytest.mark.parametrize("name", sorted(SDKS))
def test_sdk_requirements_are_fully_pinned(name: str) -> None:
    # GIVEN the requirements file the bench installs into that SDK's own venv
    lines = [
        line.strip()
        for line in SDKS[name].requirements.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    # THEN every requirement is pinned with ==, the SDK among them
    assert lines
    assert all("==" in line for line in lines)
    sdk = {"customerio": "customerio==3.2.0", "cdp": "customerio-cdp-analytics==1.1.0"}[name]
    assert sdk in lines


def test_summarise_takes_the_fastest_wall_time_and_the_median_cpu_time() -> None:
    # GIVEN three runs, one slowed down by another process
    samples = [(0.030, 0.004), (0.045, 0.006), (0.031, 0.005)]

    # WHEN they are summarised
    measured = summarise("x", 100, samples, 0.01)

    # THEN the fastest run gives events/s and the median gives CPU per event
    assert measured.wall == pytest.approx(0.030)
    assert measured.cpu_us_per_event == pytest.approx(50)


@pytest.mark.parametrize("sqs_message_id", ["059f36b4-87a3-44ab-83d2-661975830a7d", "id", "ü-ñ", ""])
def test_derived_message_id_is_uuid5_of_the_sqs_message_id_and_index(sqs_message_id: str) -> None:
    # GIVEN the fast messageId derivation the bench's profile led to (forwarding.derived_message_id)
    # WHEN it derives the ids of a record's calls
    derived = [derived_message_id(sqs_message_id, index) for index in range(3)]

    # THEN they are exactly the uuid5 values earlier releases produced, so redeliveries keep their ids
    expected = [str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{sqs_message_id}/{index}")) for index in range(3)]
    assert derived == expected
