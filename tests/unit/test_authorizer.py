"""functions/authorizer: the relay key in each form an SDK sends it, handed to API Gateway to check."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT, LambdaContext, load_event, load_function

authorizer = load_function("authorizer")
KEY = "local-test-key"


def event_with(headers: dict[str, str]) -> dict[str, Any]:
    """events/authorizer_request.json (what API Gateway sends a REQUEST authorizer) with these headers."""
    event = copy.deepcopy(load_event("authorizer_request.json"))
    event["headers"] = headers
    event["multiValueHeaders"] = {name: [value] for name, value in headers.items()}
    return event


def basic(userpass: bytes) -> str:
    return "Basic " + base64.b64encode(userpass).decode()


def test_sample_event_yields_the_basic_username_as_usage_key() -> None:
    # GIVEN the sample event: a Pipelines SDK's write key as Basic base64("local-test-key:")
    event = load_event("authorizer_request.json")

    # WHEN the authorizer runs
    answer = authorizer.lambda_handler(event, LambdaContext())

    # THEN API Gateway gets the key to check against the usage plan, and a policy for this method
    assert answer["usageIdentifierKey"] == KEY
    assert answer["policyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}],
    }
    # AND the key itself never becomes the principal (which API Gateway logs)
    assert KEY not in answer["principalId"]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": KEY},
        {"X-API-Key": f"  {KEY} "},
        {"Authorization": basic(f"{KEY}:".encode())},
        {"authorization": basic(f"{KEY}:any password".encode())},
        {"Authorization": basic(f"{KEY}:with:colons".encode())},
        {"Authorization": f"Bearer {KEY}"},
        {"AUTHORIZATION": f"bearer   {KEY}"},
        # x-api-key wins over whatever else the caller sends
        {"x-api-key": KEY, "Authorization": "Bearer someone-else"},
    ],
    ids=[
        "x-api-key",
        "x-api-key-mixed-case",
        "basic",
        "basic-password",
        "basic-colons",
        "bearer",
        "bearer-lowercase",
        "x-api-key-first",
    ],
)
def test_every_form_of_the_key_is_found(headers: dict[str, str]) -> None:
    # WHEN the key comes in one of the forms the SDKs use
    answer = authorizer.lambda_handler(event_with(headers), LambdaContext())

    # THEN it is the usage identifier key
    assert answer["usageIdentifierKey"] == KEY


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": ""},
        {"x-api-key": "   "},
        {"Authorization": ""},
        {"Authorization": "Basic "},
        {"Authorization": basic(b":password-only")},
        {"Authorization": "Basic not base64!"},
        {"Authorization": basic(b"\xff\xfe:")},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": f"Token {KEY}"},
        {"Authorization": KEY},
    ],
    ids=[
        "none",
        "empty",
        "blank",
        "empty-authorization",
        "basic-empty",
        "basic-no-user",
        "basic-garbage",
        "basic-not-utf8",
        "bearer-alone",
        "bearer-blank",
        "other-scheme",
        "no-scheme",
    ],
)
def test_no_key_is_unauthorized(headers: dict[str, str]) -> None:
    # WHEN a request carries no usable key
    # THEN the authorizer fails with exactly "Unauthorized", which API Gateway answers as its 401
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer.lambda_handler(event_with(headers), LambdaContext())


def test_headers_may_be_null() -> None:
    event = event_with({})
    event["headers"] = None
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer.lambda_handler(event, LambdaContext())


def test_cold_import_uses_the_standard_library_only() -> None:
    # GIVEN a fresh interpreter, like a cold Lambda container
    app = str(ROOT / "functions/authorizer/app.py")
    code = (
        "import importlib.util, json, sys; before = set(sys.modules);"
        f"spec = importlib.util.spec_from_file_location('app', {app!r});"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module);"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    # WHEN it imports the authorizer
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}

    # THEN only standard-library modules came along: no pydantic, no Powertools resolver, no boto3
    assert not loaded & {"pydantic", "aws_lambda_powertools", "boto3", "botocore", "urllib3", "cio_relay"}
    assert loaded - set(sys.stdlib_module_names) == set()
