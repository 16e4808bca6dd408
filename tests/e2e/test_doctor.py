"""`cio-relay doctor` as an operator runs it, against the local stack and its sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest

from local_stack import LocalStack, Options
from tests.support import ROOT


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """The local stack as a library: moto, the template's resources and secret, the sandbox."""
    with LocalStack(Options(port=0, sandbox_port=0, pollers=False)) as running:
        yield running


def doctor(stack: LocalStack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        **stack.ops_environment(),
        "PYTHONPATH": f"{ROOT / 'layers' / 'cio_relay'}{os.pathsep}{ROOT}",
        "PYTHONIOENCODING": "utf-8",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cio_relay_cli", "doctor", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def secret_values(stack: LocalStack) -> list[str]:
    secrets = boto3.client("secretsmanager", endpoint_url=stack.moto_url, region_name="us-east-1")
    data = json.loads(secrets.get_secret_value(SecretId=stack.secret_arn)["SecretString"])
    return [value for key, value in data.items() if key != "region"]


def test_doctor_with_the_stacks_own_secret_passes(stack: LocalStack) -> None:
    # GIVEN the environment `make run` prints for the operations CLI
    # WHEN doctor runs, with a connector check on the sandbox's segments endpoint
    assert stack.sandbox is not None
    app_url = stack.sandbox.app_url
    result = doctor(stack, "--check-url", f"{app_url}/v1/segments")

    # THEN every check passes and says what it proved
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("✓") for line in lines[:-1]), result.stdout
    assert lines[-1] == "doctor: all 7 checks passed"
    assert "App API key accepted" in result.stdout
    assert "Pipelines key accepted" in result.stdout
    assert f"✓ GET {app_url}/v1/segments: 200 in" in result.stdout
    for value in secret_values(stack):
        assert value not in result.stdout + result.stderr


def test_doctor_with_wrong_keys_fails_and_says_how_to_fix_without_printing_them(stack: LocalStack) -> None:
    # GIVEN a secret whose keys Customer.io (the sandbox) does not know
    wrong = {"pipelines_api_key": "pk-wrong-0001", "app_api_key": "app-wrong-0002", "region": "us"}
    secrets = boto3.client("secretsmanager", endpoint_url=stack.moto_url, region_name="us-east-1")
    arn = secrets.create_secret(Name="cio-relay-local/wrong", SecretString=json.dumps(wrong))["ARN"]

    # WHEN doctor runs with that secret
    result = doctor(stack, CUSTOMERIO_SECRET_ID=arn)

    # THEN it exits non-zero with a ✗ line and a fix for each rejected key, and no key value anywhere
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert len(failed) == 2, result.stdout
    assert all(" — fix: " in line for line in failed)
    assert any(line.startswith("✗ App API key rejected") for line in failed)
    assert any(line.startswith("✗ Pipelines key rejected") for line in failed)
    assert result.stdout.splitlines()[-1] == "doctor: 2 of 6 checks failed"
    for value in [*wrong.values(), *secret_values(stack)]:
        if value != "us":
            assert value not in result.stdout + result.stderr


def test_doctor_with_an_unreadable_secret_fails_first(stack: LocalStack) -> None:
    # WHEN the functions' secret id names nothing
    result = doctor(
        stack, CUSTOMERIO_SECRET_ID="arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf"
    )

    # THEN the secret line fails with the fix, and nothing else is attempted
    assert result.returncode == 1
    assert result.stdout.startswith(
        "✗ secret arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf"
    )
    assert "fix: create the secret" in result.stdout
    assert result.stdout.splitlines()[-1] == "doctor: 1 of 1 checks failed"
