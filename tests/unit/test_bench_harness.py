"""The `make bench` harness pieces, checked for correctness only: nothing here is timed."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cio_relay.forwarding import MESSAGE_ID_NAMESPACE, derived_message_id
from cio_relay.models.pipelines import Call
from moto import mock_aws
from pydantic import TypeAdapter

from bench.__main__ import exit_status
from bench.api_path import BATCH_CALLS, MinimalHandler, api_events
from bench.big_batches import function_limits
from bench.context import take_turns
from bench.fake import APP_KEY, PIPELINES_KEY, SITE_ID, TRACK_KEY, BenchFake
from bench.figures import END, START, copy_figures
from bench.report import DATA_FILE, REPORT_FILE, ROOT, Header, render, write
from bench.results import DASH, TIMES, Run, Section, Spread, at_least, at_most, over, paired, table
from bench.sdks import SDKS
from bench.workload import (
    INVOKE_PAYLOAD_LIMIT,
    RECEIPT_HANDLE_CHARS,
    event_bytes,
    events,
    events_batch,
    queue_body,
    records_within,
)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(
    fake: BenchFake, method: str, path: str, body: Any = None, auth: str | None = None, agent: str = "t/1"
) -> int:
    headers = {"Content-Type": "application/json", "X-Strict-Mode": "1", "User-Agent": agent}
    if auth:
        headers["Authorization"] = auth
    data = None if body is None else json.dumps(body).encode()
    base = fake.pipelines_url
    if path.startswith("/api/"):
        base = fake.track_url
    elif path.startswith("/v1/send/"):
        base = fake.app_url
    request = urllib.request.Request(f"{base}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stats(fake: BenchFake) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"{fake.pipelines_url}/__bench__/stats", timeout=5) as answer:
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


def test_bench_records_are_as_big_as_lambdas_and_the_big_event_is_what_fits_in_6_mb() -> None:
    # GIVEN the bench's SQS event at BatchSize 10,000
    every = events_batch(10_000)
    record = every["Records"][0]

    # THEN each record has every field Lambda writes, at a real length
    assert len(record["receiptHandle"]) == RECEIPT_HANDLE_CHARS
    assert set(record["attributes"]) == {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert len(record["md5OfBody"]) == 32
    # AND 10,000 of them do not fit in one invocation: Lambda hands over the first ones that do
    delivered = records_within(every)
    assert event_bytes(every) > INVOKE_PAYLOAD_LIMIT
    assert 0 < delivered < 10_000
    assert event_bytes({"Records": every["Records"][:delivered]}) <= INVOKE_PAYLOAD_LIMIT
    assert event_bytes({"Records": every["Records"][: delivered + 1]}) > INVOKE_PAYLOAD_LIMIT
    # AND a smaller event is delivered whole
    assert records_within(events_batch(100)) == 100


def test_run_gives_events_per_second_and_cpu_per_event_of_each_timed_run() -> None:
    # GIVEN two runs of 100 events: 0.05 s wall and 4 ms CPU, then 0.1 s wall and 6 ms CPU
    measured = Run("x", 100, ((0.05, 0.004), (0.1, 0.006)), requests_per_event=0.01)

    # THEN each run gives its own events/s and CPU µs/event, in turn order
    assert measured.events_per_second() == pytest.approx([2000, 1000])
    assert measured.cpu_us_per_event() == pytest.approx([40, 60])
    assert measured.walls() == [0.05, 0.1]


def test_spread_shows_the_median_then_the_lowest_and_highest_run() -> None:
    # GIVEN five run-by-run ratios, one of them from a noisy run
    spread = Spread.of([1.1, 0.9, 1.0, 3.0, 1.05])

    # THEN the median is the verdict's value and the noisy run shows as the high end
    assert spread == Spread(low=0.9, median=1.05, high=3.0, runs=5)
    assert spread.show(2, TIMES) == f"1.05{TIMES} (0.90{DASH}3.00)"
    assert Spread.of([]) is None


def test_paired_ratios_are_run_by_run() -> None:
    # GIVEN two contenders that took turns three times
    # THEN the ratio of run i is contender A's run i over contender B's run i
    assert paired([10.0, 12.0, 9.0], [5.0, 4.0, 9.0]) == pytest.approx([2.0, 3.0, 1.0])
    assert over([3.0, 6.0], 3.0) == pytest.approx([1.0, 2.0])
    assert over([3.0], None) == []


def test_targets_are_judged_on_the_median_run() -> None:
    # GIVEN ratios whose median meets the goal though one run does not, and the reverse
    passing = at_most("cold import", [1.0, 1.1, 1.4], 1.15)
    failing = at_least("speed-up", [1.2, 1.4, 2.0], 1.5)

    # THEN the verdict follows the median, and nothing measured is a SKIP, never a PASS
    assert (passing.verdict, failing.verdict) == ("PASS", "FAIL")
    assert passing.goal == f"≤ 1.15{TIMES}"
    assert failing.goal == f"≥ 1.5{TIMES}"
    assert at_most("not measured", [], 1.0).verdict == "SKIP"


def sections() -> list[Section]:
    api = Section(
        "API path",
        lines=table(["request", "CPU"], [["POST /v1/identify", "100"]]),
        targets=[at_most("API identify ÷ minimal", [1.2, 1.3, 1.25], 1.5)],
    )
    cold = Section(
        "Cold start",
        targets=[at_most("cold import ÷ boto3", [1.2, 1.25, 1.3], 1.15), at_most("authorizer", [], 1.05)],
        notes=["slowest imports: pydantic 40 ms"],
    )
    return [api, cold]


HEADER = Header(
    date="2026-01-01 00:00 UTC",
    machine="test box",
    versions={"cio-relay": "0.1.0"},
    latency_ms=25.0,
    load_average=(1.5, 2.0),
    seconds=42.0,
)


def test_report_shows_each_section_and_every_target_with_its_spread_and_verdict() -> None:
    # WHEN two sections are rendered
    text = render(HEADER, sections())

    # THEN the machine, each section's table, the targets with median (lowest-highest) and notes appear
    assert "Machine: test box, 1-minute load average 1.5 at the start and 2.0 at the end." in text
    assert "#### API path" in text
    assert "| POST /v1/identify | 100 |" in text
    assert f"| API identify ÷ minimal | ≤ 1.5{TIMES} | 1.250 (1.200{DASH}1.300) | 3 | **PASS** |" in text
    assert f"| cold import ÷ boto3 | ≤ 1.15{TIMES} | 1.250 (1.200{DASH}1.300) | 3 | **FAIL** |" in text
    assert f"| authorizer | ≤ 1.05{TIMES} | n/a | 0 | **SKIP** |" in text
    assert "- slowest imports: pydantic 40 ms" in text


def test_report_is_written_to_the_results_folder_and_ignored_by_git(tmp_path: Path) -> None:
    # WHEN a run's report is written
    report = write(HEADER, sections(), tmp_path / "results")

    # THEN the markdown and the JSON are there, and git ignores the real results folder
    assert (tmp_path / "results" / "bench.md").read_text() == report
    data = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert data["targets"][1]["verdict"] == "FAIL"
    assert data["targets"][1]["spread"] == {"low": 1.2, "median": 1.25, "high": 1.3, "runs": 3}
    assert REPORT_FILE.parent == DATA_FILE.parent == ROOT / ".cache" / "figures"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".cache/" in ignored, "make bench writes .cache/figures/: git must ignore it"


def test_strict_exits_1_only_when_a_target_failed() -> None:
    # GIVEN one run with a failed target and one where targets passed or could not be measured
    missed = sections()
    fine = [Section("x", targets=[at_most("a", [1.0], 1.5), at_most("b", [], 1.0)])]

    # THEN --strict turns only the failure into exit status 1; without it the bench reports and exits 0
    assert exit_status(missed, strict=True) == 1
    assert exit_status(fine, strict=True) == 0
    assert exit_status(missed, strict=False) == 0


def test_take_turns_alternates_who_goes_first_and_drops_the_warm_up() -> None:
    # GIVEN two contenders that record when they ran
    calls: list[str] = []

    def contender(name: str) -> Callable[[], str]:
        def run() -> str:
            calls.append(name)
            return f"{name}{len(calls)}"

        return run

    # WHEN they take turns: 1 warm-up round + 3 timed rounds
    found = take_turns([contender("a"), contender("b")], reps=3)

    # THEN the order alternates round by round and only the timed rounds are returned, in order
    assert calls == ["b", "a", "a", "b", "b", "a", "a", "b"]
    assert found == [["a3", "a6", "a7"], ["b4", "b5", "b8"]]


def test_figures_replace_only_what_stands_between_the_bench_markers(tmp_path: Path) -> None:
    # GIVEN a bench report and a docs page with the markers, and one without
    report = tmp_path / "bench.md"
    report.write_text("### new figures\n")
    doc = tmp_path / "performance.md"
    doc.write_text(f"intro\n{START}\nold figures\n{END}\noutro\n")
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")

    # WHEN the figures are copied into both
    copy_figures(report, doc)
    with pytest.raises(SystemExit, match="markers"):
        copy_figures(report, plain)

    # THEN only the marked page changed, and only between its markers
    assert doc.read_text() == f"intro\n{START}\n### new figures\n{END}\noutro\n"
    assert plain.read_text() == "no markers\n"


def test_figures_refuse_when_bench_has_not_run(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"{START}\n{END}\n")
    with pytest.raises(SystemExit, match="make bench"):
        copy_figures(tmp_path / "missing.md", doc, missing_ok=False)
    assert doc.read_text() == f"{START}\n{END}\n"


def test_function_limits_are_read_from_the_template() -> None:
    # THEN the big-batch proof uses EventsFunction's deployed timeout and memory
    timeout, memory = function_limits()
    template = (ROOT / "template.yaml").read_text()
    assert f"Timeout: {timeout:g}" in template
    assert f"MemorySize: {memory:g}" in template


def test_minimal_api_handler_queues_one_message_per_call() -> None:
    # GIVEN the bench's hand-written API handler against an SQS queue (moto)
    with mock_aws():
        url = boto3.client("sqs").create_queue(QueueName="events")["QueueUrl"]
        handler = MinimalHandler(url)
        identify, batch = api_events("identify", 1)[0], api_events("batch", 1)[0]

        # WHEN it answers an identify and a batch of ten calls
        answers = [handler(identify, None), handler(batch, None)]

        # THEN both are 200 and eleven calls are on the queue, each as Customer.io's JSON
        assert [a["statusCode"] for a in answers] == [200, 200]
        sqs = boto3.client("sqs")
        bodies = []
        while received := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            bodies += [json.loads(m["Body"]) for m in received]
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in received],
            )
    assert len(bodies) == 1 + BATCH_CALLS
    assert bodies[0]["type"] == "identify"
    assert bodies[0]["userId"] == json.loads(identify["body"])["userId"]


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


@pytest.mark.parametrize("sqs_message_id", ["059f36b4-87a3-44ab-83d2-661975830a7d", "id", "ü-ñ", ""])
def test_derived_message_id_is_uuid5_of_the_sqs_message_id_and_index(sqs_message_id: str) -> None:
    # GIVEN the fast messageId derivation the bench's profile led to (forwarding.derived_message_id)
    # WHEN it derives the ids of a record's calls
    derived = [derived_message_id(sqs_message_id, index) for index in range(3)]

    # THEN they are exactly the uuid5 values earlier releases produced, so redeliveries keep their ids
    expected = [str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{sqs_message_id}/{index}")) for index in range(3)]
    assert derived == expected
