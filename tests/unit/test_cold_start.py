"""What a cold start imports: each function module, in a fresh interpreter, leaves out the modules it never
needs. Nothing here is timed (`make bench` measures the time); these checks keep the savings from quietly
coming back when imports are reordered or a module starts importing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, json, sys
sys.path.append(sys.argv[1].rsplit("/", 1)[0])  # the task root, as in Lambda
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
print(json.dumps(sorted(sys.modules)))
"""

# Powertools' batch utility imports these parser models (type hints only) when pydantic is already
# imported, which is why each function imports cio_relay.delivery first.
PARSER_MODELS = "aws_lambda_powertools.utilities.parser.models.sqs"
# Imported where used, never by the cold start: boto3 (by the first AWS call), Powertools' batch
# utility (by a batch with a failed record) and its idempotency utility (by the first send that needs it).
ON_FIRST_USE = {
    "boto3",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.idempotency",
}
# Each function's REST side (its routes, Powertools' event handler and OpenAPI machinery) is built by
# its first API request (cio_relay.entry.RestSide): a container that only handles queue batches never
# imports it.
API_ON_FIRST_REQUEST = {"cio_relay.http_api", "aws_lambda_powertools.event_handler"}
NEVER_NEEDED = {
    "events": {
        PARSER_MODELS,
        "cio_relay.models.email",
        "aws_xray_sdk",
        *ON_FIRST_USE,
        *API_ON_FIRST_REQUEST,
        "events_api",
    },
    "email": {
        PARSER_MODELS,
        "cio_relay.models.pipelines",
        "aws_xray_sdk",
        *ON_FIRST_USE,
        *API_ON_FIRST_REQUEST,
        "email_api",
        "cio_relay.models.push",
        "cio_relay.models.sms",
    },
}


def probe(script: str, function: str, *args: str) -> Any:
    """Run `script` in a fresh interpreter on the function's handler module; its last line, as JSON."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "cio_relay"), str(ROOT)]),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "functions" / function / "app.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def modules_after_import(function: str) -> set[str]:
    return set(probe(PROBE, function))


@pytest.mark.parametrize("function", sorted(NEVER_NEEDED))
def test_cold_import_leaves_out_what_the_function_never_needs(function: str) -> None:
    # GIVEN a fresh interpreter, as a new Lambda container has
    # WHEN it imports the function's handler module
    loaded = modules_after_import(function)

    # THEN the handler is there, and none of the modules this function never uses was imported
    assert "cio_relay.delivery" in loaded
    assert loaded.isdisjoint(NEVER_NEEDED[function]), sorted(loaded & NEVER_NEEDED[function])


# Models of routes an invocation may never take, built by their first request instead of with the
# function's REST side.
BUILT_ON_FIRST_USE = {
    "email": {"cio_relay.models.push.SendPush", "cio_relay.models.sms.SendSMS"},
}

BUILT_PROBE = (
    PROBE.replace("print(json.dumps(sorted(sys.modules)))", "")
    + """
module.rest.resolver()  # the REST side, as the first API request builds it
names = json.loads(sys.argv[2])
built = {}
for name in names:
    module, _, cls = name.rpartition(".")
    built[name] = getattr(sys.modules[module], cls).__pydantic_complete__
print(json.dumps(built))
"""
)


@pytest.mark.parametrize("function", sorted(BUILT_ON_FIRST_USE))
def test_cold_import_leaves_the_models_of_other_routes_unbuilt(function: str) -> None:
    # GIVEN a fresh interpreter / WHEN it imports the function's handler module and builds its REST side
    names = sorted(BUILT_ON_FIRST_USE[function])
    built = probe(BUILT_PROBE, function, json.dumps(names))

    # THEN those models are not built yet (their first request builds them)
    assert built == dict.fromkeys(names, False)
