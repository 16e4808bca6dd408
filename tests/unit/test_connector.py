"""`cio-relay doctor check-connector`: which credential, which host and region, and a harmless probe."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from cio_relay.cio.transport import Response, raise_for_status

from cio_relay_cli.__main__ import main as cli_main
from local_stack.customerio import FakeCustomerIO
from tests.conftest import APP_KEY, PIPELINES_KEY
from tests.support import REGION, ROOT

SECRET = {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY, "region": "us"}
TRACK_SECRET = {"site_id": "site-1", "track_api_key": "trk-secret-9", "app_api_key": APP_KEY, "region": "us"}


def secret_env(secret: dict[str, Any], **extra: str) -> dict[str, str]:
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="cio", SecretString=json.dumps(secret)
    )["ARN"]
    return {"CUSTOMERIO_SECRET_ID": arn, **extra}


def fake_env(fake: FakeCustomerIO, secret: dict[str, Any]) -> dict[str, str]:
    return secret_env(secret, CUSTOMERIO_PIPELINES_URL=fake.pipelines_url, CUSTOMERIO_APP_URL=fake.app_url)


@dataclass
class Recorder:
    """Stands in for the network: records each request and answers from `answers` (status, body)."""

    answers: Mapping[str, tuple[int, dict[str, Any]]]
    sent: list[dict[str, Any]] = field(default_factory=list)

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        retry_dropped: bool = True,
    ) -> Response:
        self.sent.append({"method": method, "url": url, "headers": dict(headers), "body": body})
        status, answer = self.answers[f"{method} {url}"]
        response = Response(status=status, body=json.dumps(answer).encode(), elapsed=0.012)
        raise_for_status(response, None, what)
        return response


def run(argv: list[str], env: dict[str, str], sender: Recorder | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = cli_main(
        ["doctor", "check-connector", *argv],
        out=out,
        environ=env,
        sender_for=(lambda settings: sender) if sender is not None else None,
    )
    return code, out.getvalue()


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- --url ------------------------------------------------------------------------------------


def test_url_names_the_api_region_and_credential_and_probes_without_creating_anything(aws: None) -> None:
    # GIVEN a configuration with a Pipelines key, and Customer.io refusing an empty identify (400)
    env = secret_env(SECRET)
    cdp = Recorder({"POST https://cdp.customer.io/v1/identify": (400, {"meta": {"errors": ["userId"]}})})

    # WHEN the operator asks about the identify endpoint, as typed in the docs
    code, output = run(["--url", "https://cdp.customer.io/v1/identify", "--method", "POST"], env, cdp)

    # THEN it names the API, the region and the credential the call needs
    assert code == 0, output
    assert "is the Pipelines API (Data Pipelines), region us" in output
    assert "It needs the Pipelines key (secret key pipelines_api_key" in output
    assert "✓ region us matches this configuration" in output
    # ... and probed that very URL with an empty call in strict mode, which Customer.io refuses
    assert cdp.sent == [
        {
            "method": "POST",
            "url": "https://cdp.customer.io/v1/identify",
            "headers": {"Authorization": basic(PIPELINES_KEY), "X-Strict-Mode": "1"},
            "body": b"{}",
        }
    ]
    assert "✓ the Pipelines key accepted by Customer.io" in output
    assert "nothing was created or sent" in output
    assert PIPELINES_KEY not in output
    assert output.splitlines()[-1] == "check-connector: all 3 checks passed"


def test_url_in_the_other_region_says_which_host_to_call(aws: None) -> None:
    # GIVEN an EU workspace, and a call aimed at the US host that Customer.io rejects
    env = secret_env({**SECRET, "region": "eu"})
    cdp = Recorder({"POST https://cdp.customer.io/v1/batch": (401, {"meta": {"error": "Unauthorized"}})})

    # WHEN the operator asks about it
    code, output = run(["--url", "https://cdp.customer.io/v1/batch", "--method", "POST"], env, cdp)

    # THEN the region mismatch is named with the host to use, and the rejection is reported
    assert code == 1
    assert "✗ the host is in region us, this configuration's workspace is in eu" in output
    assert "fix: call cdp-eu.customer.io" in output
    assert "✗ the Pipelines key rejected by Customer.io (POST https://cdp.customer.io/v1/batch: 401" in output
    assert cdp.sent[0]["body"] == b'{"batch":[]}'


def test_url_that_would_change_data_is_not_called(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a working configuration
    env = fake_env(fake_cio, SECRET)

    # WHEN the operator asks about a call that would change data (a person DELETE)
    code, output = run(["--url", f"{fake_cio.app_url}/v1/customers/ada", "--method", "DELETE"], env)

    # THEN that URL is never called; the credential is probed with a read instead
    assert code == 0, output
    assert "Not called: DELETE" in output
    assert [(r.method, r.path) for r in fake_cio.requests] == [("GET", "/v1/segments")]
    assert "✓ the App API key accepted by Customer.io" in output


def test_url_probe_against_the_sandbox_carries_the_right_credential(
    aws: None, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a working configuration pointed at the fake Customer.io
    env = fake_env(fake_cio, SECRET)

    # WHEN the operator asks about the transactional send endpoint
    code, output = run(["--url", f"{fake_cio.app_url}/v1/send/email", "--method", "POST"], env)

    # THEN it went to the App API with Bearer auth and an empty body, and no email was sent
    assert code == 0, output
    sent = fake_cio.requests_to("/v1/send/email")
    assert len(sent) == 1
    assert sent[0].headers["authorization"] == fake_cio.app_auth_header()
    assert fake_cio.emails == []
    assert "is the App API, a configured custom base URL" in output


def test_unknown_host_gets_nothing(aws: None) -> None:
    # GIVEN a configuration with keys, and a URL that is no Customer.io API
    env = secret_env(SECRET)
    nowhere = Recorder({})

    # WHEN the operator asks about it
    code, output = run(["--url", "https://example.com/v1/identify", "--method", "POST"], env, nowhere)

    # THEN nothing is sent anywhere, and the hosts it could be are listed
    assert code == 1
    assert nowhere.sent == []
    assert "not a Customer.io API the relay calls (nothing was sent)" in output
    assert "cdp.customer.io" in output


# ---- --env-name -------------------------------------------------------------------------------


def test_track_token_is_explained_and_checked_with_the_region_endpoint(aws: None) -> None:
    # GIVEN Track API credentials, and Customer.io answering its region endpoint
    env = secret_env(TRACK_SECRET)
    track = Recorder(
        {
            "GET https://track.customer.io/api/v1/accounts/region": (
                200,
                {"url": "https://track.customer.io", "data_center": "us", "environment_id": 1},
            )
        }
    )

    # WHEN the operator asks about the variable, as typed in the docs
    code, output = run(["--env-name", "CUSTOMERIO_TRACK_TOKEN"], env, track)

    # THEN it says which credential it is, what for, how it is sent, and that Customer.io accepts it
    assert code == 0, output
    assert "CUSTOMERIO_TRACK_TOKEN (secret key track_api_key) is a Track API key" in output
    assert "What for: with the Site ID, EventsFunction sends identities, events and person deletes" in output
    assert "track.customer.io / track-eu.customer.io" in output
    assert (
        "✓ CUSTOMERIO_TRACK_TOKEN accepted by Customer.io (GET https://track.customer.io/api/v1/accounts/region"
        in output
    )
    assert "✓ Customer.io says this workspace is in region us, as configured" in output
    assert track.sent[0]["headers"] == {"Authorization": basic("site-1", "trk-secret-9")}
    assert track.sent[0]["body"] is None
    assert "trk-secret-9" not in output


def test_rejected_track_credentials_fail_with_the_fix(aws: None) -> None:
    # GIVEN Track credentials Customer.io does not know (its region endpoint answers 400)
    env = secret_env(TRACK_SECRET)
    track = Recorder(
        {"GET https://track.customer.io/api/v1/accounts/region": (400, {"meta": {"error": "x"}})}
    )

    # WHEN the operator asks about the site id
    code, output = run(["--env-name", "CUSTOMERIO_SITE_ID"], env, track)

    # THEN the credential is reported rejected, with where to find the right one
    assert code == 1
    assert "✗ CUSTOMERIO_SITE_ID rejected by Customer.io" in output
    assert "400 in" in output
    assert "the credentials are not valid" in output
    assert "fix: use the Site ID and Track API key" in output


def test_workspace_in_the_other_region_is_named(aws: None) -> None:
    # GIVEN a configuration for us, and Customer.io saying the workspace is in eu
    env = secret_env(TRACK_SECRET)
    track = Recorder({"GET https://track.customer.io/api/v1/accounts/region": (200, {"data_center": "eu"})})

    # WHEN the operator checks the Track token
    code, output = run(["--env-name", "CUSTOMERIO_TRACK_TOKEN"], env, track)

    # THEN the region mismatch fails with the fix
    assert code == 1
    assert "✗ Customer.io says this workspace is in region eu, the relay is set to us" in output
    assert 'fix: set "region": "eu"' in output


def test_app_token_is_probed_against_the_sandbox(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a working configuration pointed at the fake Customer.io
    env = fake_env(fake_cio, SECRET)

    # WHEN the operator asks about the App API key
    code, output = run(["--env-name", "CUSTOMERIO_APP_TOKEN"], env)

    # THEN it is explained and proved with a read of the segments
    assert code == 0, output
    assert "What for: EmailFunction sends transactional email" in output
    assert [(r.method, r.path, r.status) for r in fake_cio.requests] == [("GET", "/v1/segments", 200)]
    assert APP_KEY not in output


def test_missing_credential_says_where_to_put_it(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret without the App API key
    env = fake_env(fake_cio, {"pipelines_api_key": PIPELINES_KEY, "region": "us"})

    # WHEN the operator asks about it
    code, output = run(["--env-name", "CUSTOMERIO_APP_TOKEN"], env)

    # THEN it fails with the fix, and nothing was sent
    assert code == 1
    assert "✗ CUSTOMERIO_APP_TOKEN is not set in secret" in output
    assert 'fix: add "app_api_key" to secret' in output
    assert fake_cio.requests == []


def test_track_credentials_are_not_needed_next_to_a_pipelines_key(
    aws: None, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a Pipelines key and no Track credentials
    env = fake_env(fake_cio, SECRET)

    # WHEN the operator asks about the Track token
    code, output = run(["--env-name", "CUSTOMERIO_TRACK_TOKEN"], env)

    # THEN it passes: the relay uses the Pipelines key instead
    assert code == 0, output
    assert "not needed: the relay uses the Pipelines key" in output


def test_variables_that_are_not_credentials_are_explained() -> None:
    # WHEN the operator asks about the region variable, or a name cio-relay does not read
    region_code, region = run(["--env-name", "CUSTOMERIO_REGION"], {"CUSTOMERIO_APP_TOKEN": "x"})
    typo_code, typo = run(["--env-name", "CUSTOMERIO_API_KEY"], {"CUSTOMERIO_APP_TOKEN": "x"})

    # THEN the first is explained, the second refused with the names that exist
    assert region_code == 0
    assert "CUSTOMERIO_REGION is not a credential: it is the workspace's data center" in region
    assert typo_code == 1
    assert "CUSTOMERIO_API_KEY is not a variable cio-relay reads" in typo
    assert "CUSTOMERIO_TRACK_TOKEN" in typo


def test_local_credentials_come_from_the_environment(fake_cio: FakeCustomerIO) -> None:
    # GIVEN no secret, the key in the shell (a local run)
    env = {
        "CUSTOMERIO_PIPELINES_API_KEY": fake_cio.pipelines_api_key or "",
        "CUSTOMERIO_PIPELINES_URL": fake_cio.pipelines_url,
        "CUSTOMERIO_APP_URL": fake_cio.app_url,
    }

    # WHEN the operator asks about it
    code, output = run(["--env-name", "CUSTOMERIO_PIPELINES_API_KEY"], env)

    # THEN it is found in the environment and proved with an empty strict-mode batch
    assert code == 0, output
    assert "is set in environment variables CUSTOMERIO_*" in output
    assert fake_cio.requests[0].path == "/v1/batch"
    assert fake_cio.pipelines_calls() == []


# ---- as typed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["doctor", "--help"],
        ["doctor", "check-connector", "--help"],
        ["dlq", "list", "--help"],
        ["dlq", "show", "--help"],
        ["dlq", "redrive", "--help"],
    ],
)
def test_the_console_script_runs_as_typed(argv: list[str]) -> None:
    # GIVEN the console script `make venv` installs next to this interpreter
    script = Path(sys.executable).parent / "cio-relay"
    assert script.exists(), f"{script} is missing: `make venv` installs it (pip install -e .)"

    # WHEN it runs from outside the repository, with no PYTHONPATH (as an operator types it)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(script), *argv], cwd="/", env=env, capture_output=True, text=True, timeout=60, check=False
    )

    # THEN it answers with its usage
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cio-relay"), result.stdout
    assert ROOT.exists()
