"""Test helpers shared by every suite: events/ loading, SAM-format event builders, handler loading."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = ROOT / "events"
REGION = "us-east-1"


def load_event(name: str) -> dict[str, Any]:
    """One JSON file of events/ (the same files `sam local invoke -e` takes)."""
    data: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return data


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py under a unique module name (both functions have an app.py)."""
    module_name = f"cio_relay_function_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    task_root = str(ROOT / "functions" / name)
    if task_root not in sys.path:  # as in Lambda: the handler's modules import their siblings
        sys.path.append(task_root)
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def pip_install(python: Path, requirements: list[Path], *, env: Mapping[str, str] | None = None) -> str:
    """Install pinned requirement files into the venv of `python`; returns what failed ("" if none).

    With uv (the dev venv has it, pinned in requirements-dev.txt) the packages install in parallel: a
    few seconds instead of pip's tens, which the test venvs of a fresh clone would otherwise cost the
    gate. Without it, pip.
    """
    uv = Path(sys.executable).with_name("uv")
    files = [arg for path in requirements for arg in ("-r", str(path))]
    if uv.exists() or shutil.which("uv"):
        command = [
            str(uv if uv.exists() else "uv"),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            *files,
        ]
    else:
        command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *files]
    done = subprocess.run(  # nosec B603 - fixed commands, pinned files of this repository
        command,
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=600,
        check=False,
    )
    if done.returncode == 0:
        return ""
    lines = [
        line for line in (done.stderr + done.stdout).splitlines() if not line.startswith("WARNING: Location")
    ]
    return f"{' '.join(command[:3])} ... failed:\n" + "\n".join(lines[-20:])


@dataclass
class LambdaContext:
    """A Lambda context that can tell time: remaining_ms goes down as tests say so."""

    function_name: str = "cio-relay-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:cio-relay-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    remaining_ms: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def api_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    base64_body: bool = False,
    raw_body: str | None = None,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event shaped like `sam local generate-event apigateway aws-proxy`."""
    text = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    all_headers = {"Content-Type": "application/json", "x-api-key": "local-test-key", **(headers or {})}
    if text is not None and base64_body:
        text = base64.b64encode(text.encode()).decode()
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "resourcePath": resource or path,
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1", "apiKey": "local-test-key"},
            "protocol": "HTTP/1.1",
            "apiId": "local",
        },
        "body": text,
        "isBase64Encoded": base64_body,
    }


def sqs_records_from(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Turn ReceiveMessage results into the SQS event Lambda's event source mapping would deliver."""
    records = []
    for message in messages:
        attributes = {
            name: {"stringValue": value.get("StringValue"), "dataType": value.get("DataType", "String")}
            for name, value in (message.get("MessageAttributes") or {}).items()
        }
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes") or {"ApproximateReceiveCount": "1"},
                "messageAttributes": attributes,
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def sqs_event(bodies: list[str], *, queue_arn: str, receive_count: int = 1) -> dict[str, Any]:
    """A synthetic SQS event (for tests that do not need a real queue behind it)."""
    messages = [
        {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": f"handle-{i}",
            "Body": body,
            "Attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1700000000000"},
        }
        for i, body in enumerate(bodies)
    ]
    return sqs_records_from(messages, queue_arn)


# ---- waiting on progress, not on the clock ------------------------------------------------------

STALL_SECONDS = 60.0  # no change at all in what is pending for this long means stuck, however busy


def wait_for_progress(
    pending: Callable[[], Mapping[str, Any]],
    *,
    what: str,
    stall_seconds: float = STALL_SECONDS,
    interval: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> None:
    """Wait until `pending()` is empty (every value falsy); fail when it stops changing.

    A busy machine makes everything slower but still moves: the wait lasts as long as the pending
    state keeps changing, and fails only after `stall_seconds` without any change, with a message
    naming what was still pending (and `detail()`, e.g. a log tail).
    """
    last: str | None = None
    changed = time.monotonic()
    while True:
        state = {name: value for name, value in pending().items() if value}
        if not state:
            return
        snapshot = repr(sorted(state.items()))
        now = time.monotonic()
        if snapshot != last:
            last, changed = snapshot, now
        elif now - changed >= stall_seconds:
            lines = "\n".join(f"  {name}: {value}" for name, value in sorted(state.items()))
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(
                f"{what}: no progress for {stall_seconds:g} s; still pending:\n{lines}{extra}"
            )
        time.sleep(interval)
