"""The official clients, unmodified, against the local stack: only their host and the relay key K.

Each client runs in a subprocess of its own venv (Python) or under node, pointed at the local stack's
API with K as its native credential: the write key (Basic) for the Pipelines SDKs, the App API key
(Bearer) for the App API clients. Every call must reach the sandbox Customer.io with the messageId
the SDK gave it; the batch holds one call the relay refuses, which must be the only one missing (and
the SDK must see success: the valid calls are not retried or dropped). Email sends must arrive, and
a deferred send's 202 body must come back from the client as a value, not an exception.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_stack import LocalStack, Options
from local_stack.customerio import Fault
from local_stack.stack import reset_layer_caches
from tests.sdk.conftest import HERE, Installed, node_environment
from tests.support import wait_for_progress

CLIENT_TIMEOUT = 120
CALL_TYPES = ["identify", "track", "page", "screen", "group", "alias"]


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    options = Options(port=0, sandbox_port=0, customerio="sandbox", retry_base=0.2, retry_cap=1.0)
    with LocalStack(options) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _stack_environment(local: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py isolates every test's environment; point AWS clients back at this stack's moto."""
    for name, value in local.ops_environment().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    reset_layer_caches()


def run_client(
    command: list[str], config: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, Any]:
    done = subprocess.run(
        command,
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=env,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    failed = f"{command[-1]} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    assert done.returncode == 0, failed
    assert lines, failed
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def delivered_ids(stack: LocalStack) -> dict[str, dict[str, Any]]:
    assert stack.sandbox is not None
    return {str(call.get("messageId")): call for call in stack.sandbox.pipelines_calls()}


def wait_delivered(stack: LocalStack, ids: list[str]) -> dict[str, dict[str, Any]]:
    wait_for_progress(
        lambda: {"not yet at the sandbox": sorted(set(ids) - set(delivered_ids(stack)))},
        what="calls queued by the relay reaching the sandbox",
    )
    return delivered_ids(stack)


def assert_pipelines_client_worked(stack: LocalStack, out: dict[str, Any], expect_ids: list[str]) -> None:
    # THEN the SDK saw success for everything it sent (nothing to retry, nothing dropped)
    assert out["errors"] == []
    assert len(set(expect_ids)) == len(expect_ids)
    assert all(expect_ids)
    # AND every valid call reached Customer.io with the messageId the SDK gave it, in strict mode
    delivered = wait_delivered(stack, expect_ids)
    assert [delivered[i]["type"] for i in out["message_ids"]] == CALL_TYPES
    # AND only the invalid call of the batch is missing: the relay refused it alone
    assert out["invalid_id"] not in delivered


@pytest.mark.parametrize("sdk", ["cdp", "segment"])
def test_python_pipelines_sdk_with_only_host_and_write_key(
    sdks: dict[str, Installed], local: LocalStack, sdk: str
) -> None:
    # GIVEN customerio-cdp-analytics 1.1.0 or segment-analytics-python 2.4 with host = the relay and
    # write key = K: a gzip batch of seven calls (one with a blank userId), then one plain call
    python = sdks[sdk].require()

    # WHEN it runs
    out = run_client(
        [str(python), str(HERE / "clients" / "pipelines_python.py")],
        {"sdk": sdk, "host": local.api_url, "key": local.api_key},
    )

    # THEN (see assert_pipelines_client_worked) every valid call arrives, the invalid one alone does not
    assert_pipelines_client_worked(local, out, [*out["message_ids"], out["single_id"]])


def test_node_pipelines_sdk_with_only_host_and_write_key(
    sdks: dict[str, Installed], local: LocalStack
) -> None:
    # GIVEN @customerio/cdp-analytics-node with host = the relay and writeKey = K: seven calls in one
    # batch, one of them with a blank userId
    modules = sdks["node"].require()

    # WHEN it runs and flushes
    out = run_client(
        ["node", str(HERE / "node" / "pipelines.js")],
        {"host": local.api_url, "key": local.api_key},
        node_environment(modules),
    )

    # THEN every valid call arrives with its messageId; only the invalid one is missing
    assert_pipelines_client_worked(local, out, out["message_ids"])


def app_api_command(sdks: dict[str, Installed], client: str) -> tuple[list[str], dict[str, str] | None]:
    if client == "python":
        return [str(sdks["customerio"].require()), str(HERE / "clients" / "app_api_python.py")], None
    modules = sdks["node"].require()
    return ["node", str(HERE / "node" / "app_api.js")], node_environment(modules)


@pytest.mark.parametrize("client", ["python", "node"])
def test_app_api_client_sends_email_and_takes_a_deferred_answer(
    sdks: dict[str, Installed], local: LocalStack, client: str
) -> None:
    # GIVEN customerio 3.2 (Python) APIClient or customerio-node 5 APIClient with url = the relay and
    # App API key = K (sent as Bearer)
    command, env = app_api_command(sdks, client)
    sandbox = local.sandbox
    assert sandbox is not None
    user = f"{client}-mail-1"

    # WHEN it sends an email
    sent = run_client(command, {"host": local.api_url, "key": local.api_key, "user": user}, env)

    # THEN the client returns Customer.io's answer, and the email arrived
    assert "error" not in sent, sent
    delivery_id = sent["result"]["delivery_id"]
    assert [e["json"]["identifiers"] for e in sandbox.emails if e["delivery_id"] == delivery_id] == [
        {"id": user}
    ]

    # WHEN Customer.io cannot take the next send right now (the relay defers it: 202)
    sandbox.fail("/v1/send/email", Fault(status=503))
    deferred_user = f"{client}-mail-2"
    deferred = run_client(command, {"host": local.api_url, "key": local.api_key, "user": deferred_user}, env)

    # THEN the client hands back the 202 body as its result (no exception, nothing to parse wrongly)
    assert "error" not in deferred, deferred
    assert deferred["result"]["status"] == "queued"
    assert deferred["result"]["reason"] == "customerio_unavailable"
    # AND the email arrives from the queue
    wait_for_progress(
        lambda: {
            "email not at the sandbox": not any(
                e["json"]["identifiers"] == {"id": deferred_user} for e in sandbox.emails
            )
        },
        what="deferred email",
    )


def test_node_sdk_drops_a_stage_path_in_its_host(tmp_path: Path) -> None:
    # GIVEN the URL construction the Node Pipelines SDK uses (new URL('/v1/batch', host))
    # THEN a stage path in the host is lost: why a deployed API needs the custom domain (or `path`)
    script = "console.log(new URL('/v1/batch', 'https://abc.execute-api.us-east-1.amazonaws.com/prod').href)"
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0 and "node" not in done.stderr:
        pytest.skip("node is not installed")
    assert done.stdout.strip() == "https://abc.execute-api.us-east-1.amazonaws.com/v1/batch"
