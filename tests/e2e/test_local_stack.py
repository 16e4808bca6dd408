"""`make run` as a user runs it: a subprocess on ephemeral ports, real HTTP, the sandbox's own view."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3

from local_stack import LocalStack, Options
from local_stack.template import Template, TemplateError
from tests.support import REGION, ROOT, wait_for_progress

START_TIMEOUT = 60


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    log: Path
    urls: dict[str, str]
    http: urllib3.PoolManager

    @property
    def api_url(self) -> str:
        return self.urls["API_URL"]

    @property
    def api_key(self) -> str:
        return self.urls["API_KEY"]

    def output(self) -> str:
        return self.log.read_text()

    def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = "default", **headers: str
    ) -> Any:
        sent = {"content-type": "application/json", **headers}
        if key is not None:
            sent["x-api-key"] = self.api_key if key == "default" else key
        return self.http.request(
            method, self.api_url + path, body=None if body is None else json.dumps(body), headers=sent
        )

    def state(self) -> dict[str, Any]:
        answer = self.http.request("GET", self.urls["SANDBOX_URL"] + "/_sandbox/state")
        assert answer.status == 200
        data: dict[str, Any] = answer.json()
        return data

    def sqs(self) -> Any:
        return boto3.client(
            "sqs",
            endpoint_url=self.urls["MOTO_URL"],
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def queue_url(self, logical_id: str) -> str:
        return str(next(q["url"] for q in self.state()["queues"] if q["logical_id"] == logical_id))

    def interrupt(self) -> int:
        """Ctrl-C, as a user stops `make run`."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


@contextmanager
def local_stack(tmp_path: Path, *args: str) -> Iterator[RunningStack]:
    log = tmp_path / f"local-stack-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'cio_relay'}{os.pathsep}{ROOT}"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "local_stack", "--port", "0", "--sandbox-port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "READY" not in log.read_text():
            assert process.poll() is None, f"the local stack exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the local stack did not start:\n{log.read_text()}"
            time.sleep(0.1)
        urls = dict(
            line.split("=", 1)
            for line in log.read_text().splitlines()
            if line.split("=", 1)[0] in ("API_URL", "API_KEY", "SANDBOX_URL", "MOTO_URL", "CUSTOMERIO_URL")
        )
        yield RunningStack(process, log, urls, urllib3.PoolManager(retries=False, timeout=30))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def delivered_calls(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Pipelines call the sandbox accepted, batches expanded."""
    calls: list[dict[str, Any]] = []
    for call in state["calls"]:
        if not call["accepted"] or not isinstance(call["json"], dict):
            continue
        if call["path"] == "/v1/batch":
            calls.extend(call["json"]["batch"])
        elif call["path"] in (
            "/v1/identify",
            "/v1/track",
            "/v1/page",
            "/v1/screen",
            "/v1/group",
            "/v1/alias",
        ):
            calls.append({**call["json"], "type": call["path"].rsplit("/", 1)[-1]})
    return calls


def test_every_operation_goes_through_the_local_stack(tmp_path: Path) -> None:
    with local_stack(tmp_path) as stack:
        # GIVEN the stack started as `make run` starts it, printing what a user needs
        output = stack.output()
        assert stack.api_key.startswith("local-")
        assert "curl -sS -X POST" in output
        assert "EventsQueue -> EventsFunction: batch 100, window 2 s, maxReceiveCount 10" in output

        # WHEN every operation is called over HTTP with the key
        queued = {
            "identify": stack.call(
                "POST", "/v1/identify", {"userId": "u1", "traits": {"email": "ada@example.com"}}
            ),
            "track": stack.call("POST", "/v1/track", {"userId": "u1", "event": "order_completed"}),
            "page": stack.call("POST", "/v1/page", {"userId": "u1", "name": "pricing"}),
            "screen": stack.call("POST", "/v1/screen", {"anonymousId": "a1", "name": "home"}),
            "group": stack.call("POST", "/v1/group", {"userId": "u1", "groupId": "acme"}),
            "alias": stack.call("POST", "/v1/alias", {"previousId": "a1", "userId": "u1"}),
            "batch": stack.call(
                "POST",
                "/v1/batch",
                {
                    "batch": [
                        {"type": "identify", "userId": "u2"},
                        {"type": "track", "userId": "u2", "event": "signed_up"},
                    ]
                },
            ),
            "delete": stack.call("DELETE", "/v1/customers/user%203"),
        }
        search = stack.call("POST", "/v1/customers?limit=2", {"filter": {"segment": {"id": 1}}})
        segments = stack.call("GET", "/v1/segments")
        email = stack.call(
            "POST",
            "/v1/send/email",
            {"transactional_message_id": 7, "to": "ada@example.com", "identifiers": {"id": "u1"}},
        )
        no_key = stack.call("POST", "/v1/track", {"userId": "u1", "event": "x"}, key=None)
        wrong_key = stack.call("POST", "/v1/track", {"userId": "u1", "event": "x"}, key="not-the-key")
        no_route = stack.call("GET", "/v1/nothing-here")
        invalid = stack.call("POST", "/v1/track", {"userId": "u1"})

        # THEN queued operations answer 200 with their call ids, synchronous ones answer Customer.io's data
        for name, answer in queued.items():
            assert answer.status == 200, (name, answer.data)
            assert answer.json()["status"] == "queued"
        call_ids = {i for answer in queued.values() for i in answer.json()["call_ids"]}
        assert len(call_ids) == 9
        assert search.status == 200
        assert [p["id"] for p in search.json()["identifiers"]] == ["user-1", "user-2"]
        assert segments.status == 200
        assert [s["name"] for s in segments.json()["segments"]] == ["Active customers", "Beta testers"]
        assert email.status == 200
        assert email.json()["delivery_id"].startswith("fake-")
        # ... and API Gateway's own answers come first, as deployed
        assert no_key.status == 401
        assert no_key.json()["code"] == "UNAUTHORIZED"
        assert wrong_key.status == 403
        assert wrong_key.json()["code"] == "INVALID_API_KEY"
        assert no_route.status == 404
        assert "GET /v1/nothing-here" in no_route.json()["message"]
        assert invalid.status == 400
        assert invalid.json()["code"] == "validation_error"

        # THEN every queued call reaches the sandbox through the EventsQueue poller, in strict mode
        wait_for_progress(
            lambda: {
                "calls not delivered": sorted(
                    call_ids - {c.get("messageId") for c in delivered_calls(stack.state())}
                )
            },
            what="delivery through the EventsQueue poller",
            detail=lambda: f"stack output:\n{stack.output()[-6000:]}",
        )
        state = stack.state()
        by_id = {c["messageId"]: c for c in delivered_calls(state)}
        types = sorted(by_id[i]["type"] for i in call_ids)
        assert types == [
            "alias",
            "group",
            "identify",
            "identify",
            "page",
            "screen",
            "track",
            "track",
            "track",
        ]
        deleted = next(by_id[i] for i in queued["delete"].json()["call_ids"])
        assert (deleted["event"], deleted["userId"]) == ("User Deleted", "user 3")
        paths = [(c["method"], c["path"]) for c in state["calls"]]
        assert ("POST", "/v1/customers") in paths
        assert ("GET", "/v1/segments") in paths
        assert [e["json"]["identifiers"] for e in state["emails"]] == [{"id": "u1"}]
        assert all(c["strict"] for c in state["calls"] if c["path"].startswith("/v1/batch"))
        assert "authorization" not in json.dumps(state).lower()
        assert not state["dead_letters"]
        # ... and the sandbox page shows the same
        page = stack.http.request("GET", stack.urls["SANDBOX_URL"] + "/")
        assert page.status == 200
        assert "Calls Customer.io received" in page.data.decode()

        # WHEN the user presses Ctrl-C
        code = stack.interrupt()

        # THEN everything stops cleanly, after one log line per request and batch
        output = stack.output()
        assert code == 0, output
        assert output.rstrip().endswith("stopped")
        assert "API  POST /v1/identify -> EventsFunction 200" in output
        assert "API  POST /v1/track 403 INVALID_API_KEY" in output
        assert "SQS  EventsQueue -> EventsFunction:" in output
        assert "Traceback" not in output


def test_chaos_every_message_arrives_or_waits_in_a_dead_letter_queue_with_its_reason(tmp_path: Path) -> None:
    chaos = ("--chaos", "0.3", "--chaos-path", "/v1/batch=0.5", "--seed", "11")
    with local_stack(tmp_path, *chaos, "--retry-base", "1", "--retry-cap", "3") as stack:
        # GIVEN a sandbox that fails 30% of requests, half the batches (429, 5xx, drops, slow answers),
        # and whose next two batches fail for sure
        assert "chaos: all paths 30%, /v1/batch 50%" in stack.output()
        control = stack.urls["SANDBOX_URL"] + "/_sandbox/fail"
        answer = stack.http.request("POST", control, json={"path": "/v1/batch", "status": 503, "count": 2})
        assert answer.status == 200

        # WHEN events, a batch and emails arrive over HTTP, and two bad messages arrive straight on the queues
        call_ids: set[str] = set()
        for i in range(25):
            answer = stack.call("POST", "/v1/track", {"userId": f"u{i}", "event": "order_completed"})
            assert answer.status == 200
            call_ids.update(answer.json()["call_ids"])
        batch = [{"type": "identify", "userId": f"b{i}", "traits": {"n": i}} for i in range(10)]
        answer = stack.call("POST", "/v1/batch", {"batch": batch})
        call_ids.update(answer.json()["call_ids"])
        recipients = [f"person{i}@example.com" for i in range(6)]
        for i, to in enumerate(recipients):
            answer = stack.call(
                "POST",
                "/v1/send/email",
                {"transactional_message_id": 3, "to": to, "identifiers": {"id": f"u{i}"}},
                **{"Idempotency-Key": f"welcome-{i}"},
            )
            assert answer.status in (200, 202), answer.data
        sqs = stack.sqs()
        sqs.send_message(QueueUrl=stack.queue_url("EventsQueue"), MessageBody=json.dumps({"type": "track"}))
        sqs.send_message(QueueUrl=stack.queue_url("EmailQueue"), MessageBody=json.dumps({"identifiers": {}}))

        # THEN every call is delivered or dead-lettered with a reason
        def unsettled() -> dict[str, object]:
            state = stack.state()
            delivered = {c.get("messageId") for c in delivered_calls(state)}
            parked = " ".join(d["body"] for d in state["dead_letters"])
            sent = {e["json"]["to"] for e in state["emails"]}
            return {
                "calls neither delivered nor dead-lettered": [
                    i for i in sorted(call_ids) if i not in delivered and i not in parked
                ],
                "emails neither sent nor dead-lettered": [
                    to for to in recipients if to not in sent and to not in parked
                ],
                "dead letters missing (at least 2 expected)": max(0, 2 - len(state["dead_letters"])),
                "queues not empty": [
                    (q["logical_id"], q["visible"], q["in_flight"])
                    for q in state["queues"]
                    if q["redrive"] and q["visible"] + q["in_flight"]
                ],
            }

        wait_for_progress(
            unsettled, what="chaos run", detail=lambda: f"stack output:\n{stack.output()[-6000:]}"
        )
        state = stack.state()
        assert sum(state["customerio"]["faults_injected"].values()) > 0
        for dead in state["dead_letters"]:
            assert dead["failure_reason"], dead
        # ... the two bad messages were dead-lettered at once by the functions (anything else there was
        # moved by SQS after maxReceiveCount retries, and carries its last failure as the reason)
        rejected = {
            (d["queue"], d["failure_status"]) for d in state["dead_letters"] if d["moved_by"] == "function"
        }
        assert rejected == {("EventsDeadLetterQueue", "400"), ("EmailDeadLetterQueue", "400")}
        # ... no email went out twice, retries and all
        sent = [e["json"]["to"] for e in state["emails"]]
        assert len(sent) == len(set(sent))

        # WHEN the user presses Ctrl-C in the middle of it all
        code = stack.interrupt()

        # THEN the stack still stops cleanly
        assert code == 0, stack.output()[-3000:]
        assert "record will be retried" in stack.output()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _signal_state(pid: int) -> str:
    """A process's name, state, parent and signal masks from /proc (what the stack's watch reads)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return f"{pid}: gone"
    wanted = ("Name:", "State:", "PPid:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:")
    return f"{pid}: " + ", ".join(" ".join(line.split()) for line in lines if line.startswith(wanted))


def test_kill_int_of_makes_pid_stops_the_stack_like_ctrl_c(tmp_path: Path) -> None:
    # GIVEN `make run` as a user starts it: make is the parent of the stack
    log = tmp_path / "make-run.log"
    stamp = ROOT / ".venv" / ".installed-run"
    command = ["make", "--no-print-directory", "-o", str(stamp), "run", f"PY={sys.executable}"]
    with log.open("wb") as sink:
        make = subprocess.Popen(
            [*command, "ARGS=--port 0 --sandbox-port 0"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,  # not the test worker's own stdin (xdist talks to it over that pipe)
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to make's pid reaches make only, as with `kill -INT`
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "READY" not in log.read_text():
            assert make.poll() is None, f"make run exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"make run did not print READY:\n{log.read_text()}"
            time.sleep(0.1)
        stack_pids = _children(make.pid)
        assert stack_pids, "make run has no child process"

        # WHEN make's pid (not the stack's) gets SIGINT
        os.kill(make.pid, signal.SIGINT)

        # THEN the stack stops the way Ctrl-C stops it, and make exits
        try:
            make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"make run still running after SIGINT; make {_signal_state(make.pid)}; the stack "
                f"{[_signal_state(pid) for pid in stack_pids]}:\n{log.read_text()}"
            ) from None
        output = log.read_text()
        assert "make was interrupted: stopping like Ctrl-C" in output
        assert output.rstrip().splitlines()[-1].startswith(("stopped", "make:")), output[-500:]
        assert "stopped" in output.splitlines()
        assert not [pid for pid in stack_pids if Path(f"/proc/{pid}").exists()], "the stack outlived make"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def test_resources_come_from_the_template_and_its_parameters() -> None:
    # GIVEN the template as the local stack reads it, and one parameter overridden as --param would
    template = Template(ROOT / "template.yaml")
    events_queue = template.resources["EventsQueue"]["Properties"]

    # WHEN the stack starts (as a library, no pollers)
    options = Options(port=0, sandbox_port=0, pollers=False, parameters={"MaxReceiveCount": "7"})
    with LocalStack(options) as stack:
        sqs = boto3.client("sqs", endpoint_url=stack.moto_url, region_name=REGION)
        queue = stack.queues["EventsQueue"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
        dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name=REGION)
        events = next(f for f in stack.functions if f.logical_id == "EventsFunction")
        ttl = dynamodb.describe_time_to_live(TableName=events.environment["IDEMPOTENCY_TABLE"])
        secrets = boto3.client("secretsmanager", endpoint_url=stack.moto_url, region_name=REGION)
        secret = json.loads(secrets.get_secret_value(SecretId=stack.secret_arn)["SecretString"])

    # THEN moto holds what the template declares, with the parameter applied
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": stack.queues["EventsDeadLetterQueue"].arn,
        "maxReceiveCount": 7,
    }
    # (the visibility follows the batching window: 6 x the 30 s timeout + the default window of 2 s)
    window = template.parameters["EventsBatchingWindowSeconds"]["Default"]
    mapping = template.data["Mappings"]["VisibilityForWindow"]
    assert attributes["VisibilityTimeout"] == str(mapping[str(window)]["Seconds"]) == "182"
    assert attributes["MessageRetentionPeriod"] == str(events_queue["MessageRetentionPeriod"])
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expiration"
    # ... the functions see the template's variables, pointed at the local resources
    assert events.environment["EVENTS_QUEUE_URL"] == queue.url
    assert events.environment["EVENTS_DLQ_URL"] == stack.queues["EventsDeadLetterQueue"].url
    assert events.environment["CUSTOMERIO_SECRET_ID"] == stack.secret_arn
    assert events.environment["POWERTOOLS_SERVICE_NAME"] == "cio-relay-events"
    assert events.environment["RETRY_BASE_SECONDS"] == "2"
    # ... and the secret has docs/design.md's shape, with the sandbox's keys
    assert set(secret) == {"pipelines_api_key", "app_api_key", "region"}


def test_customerio_variables_in_the_shell_are_ignored_without_real() -> None:
    # GIVEN Customer.io credentials in the shell, but no --real
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")},
        "CUSTOMERIO_PIPELINES_API_KEY": "pk-real-0001",
        "CUSTOMERIO_APP_TOKEN": "app-real-0002",
    }

    # WHEN the stack starts with the defaults (what `make run` does)
    with LocalStack(Options(port=0, sandbox_port=0, pollers=False), environ=environ) as stack:
        secrets = boto3.client("secretsmanager", endpoint_url=stack.moto_url, region_name=REGION)
        secret = json.loads(secrets.get_secret_value(SecretId=stack.secret_arn)["SecretString"])
        banner = stack.banner()
        env = stack.functions[0].environment

    # THEN the functions talk to the sandbox with the sandbox's keys, never the shell's
    assert stack.customerio_mode == "sandbox"
    assert stack.sandbox is not None
    assert {name: env[name] for name in stack.sandbox.environment()} == stack.sandbox.environment()
    assert "pk-real-0001" not in json.dumps(secret)
    assert "app-real-0002" not in json.dumps(secret)
    # ... and the banner says in plain words where calls go, and which variables it ignored
    assert "Nothing leaves this machine" in banner
    # ... with the sandbox's three listeners and the backend the relay uses for identities and events
    for api, url in (
        ("Pipelines", stack.sandbox.pipelines_url),
        ("App", stack.sandbox.app_url),
        ("Track", stack.sandbox.track_url),
    ):
        assert re.search(rf"sandbox {api} API +{re.escape(url)}$", banner, re.MULTILINE), api
    assert "identities and events go to the Pipelines API" in banner
    assert "ignored: CUSTOMERIO_APP_TOKEN, CUSTOMERIO_PIPELINES_API_KEY" in banner
    assert "--real" in banner
    assert "WARNING: real Customer.io" not in banner
    assert "pk-real-0001" not in banner


def test_real_without_credentials_refuses_to_start() -> None:
    # GIVEN --real but no Customer.io credentials anywhere
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}

    # WHEN the stack starts, THEN it refuses, naming the variables it needs
    with pytest.raises(TemplateError, match="CUSTOMERIO_PIPELINES_API_KEY"):
        LocalStack(Options(port=0, sandbox_port=0, pollers=False, customerio="real"), environ=environ).start()


def test_real_selects_the_real_customerio_with_the_shells_credentials() -> None:
    # GIVEN Customer.io credentials in the environment, as docs/design.md names them
    environ = {
        **os.environ,
        "CUSTOMERIO_PIPELINES_API_KEY": "pk-real-0001",
        "CUSTOMERIO_APP_TOKEN": "app-real-0002",
        "CUSTOMERIO_REGION": "eu",
    }

    # WHEN the stack starts with --real (nothing is sent anywhere: no request is made)
    options = Options(port=0, sandbox_port=0, pollers=False, customerio="real")
    with LocalStack(options, environ=environ) as stack:
        secrets = boto3.client("secretsmanager", endpoint_url=stack.moto_url, region_name=REGION)
        secret = json.loads(secrets.get_secret_value(SecretId=stack.secret_arn)["SecretString"])
        banner = stack.banner()
        env = stack.functions[0].environment

    # THEN there is no sandbox; the functions read the real keys from the secret and use the real hosts
    assert stack.customerio_mode == "real"
    assert stack.sandbox is None
    assert secret == {"pipelines_api_key": "pk-real-0001", "app_api_key": "app-real-0002", "region": "eu"}
    assert env["CUSTOMERIO_PIPELINES_URL"] == env["CUSTOMERIO_APP_URL"] == ""
    assert "WARNING: real Customer.io" in banner
    assert "pk-real-0001" not in banner
    assert "identities and events go to the Pipelines API" in banner


def test_real_with_only_track_credentials_says_events_go_to_the_track_api() -> None:
    # GIVEN only Track API credentials (site_id + track_api_key) in the environment, with --real
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")},
        "CUSTOMERIO_SITE_ID": "site-real-0001",
        "CUSTOMERIO_TRACK_TOKEN": "track-real-0002",
        "CUSTOMERIO_APP_TOKEN": "app-real-0003",
    }

    # WHEN the stack starts (no request is made)
    options = Options(port=0, sandbox_port=0, pollers=False, customerio="real")
    with LocalStack(options, environ=environ) as stack:
        banner = stack.banner()

    # THEN the banner says the relay uses the Track API, and shows no key
    assert "identities and events go to the Track API" in banner
    assert "track-real-0002" not in banner
