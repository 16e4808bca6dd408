"""The operations CLI: doctor's checks and fixes, and the dead-letter queue commands."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import urllib3
from botocore.stub import Stubber
from cio_relay.cio.transport import Transport
from cio_relay.settings import load_settings
from moto.server import ThreadedMotoServer

from cio_relay_cli import aws as cli_aws
from cio_relay_cli import dlq as cli_dlq
from cio_relay_cli import doctor as cli_doctor
from cio_relay_cli.__main__ import main as cli_main
from local_stack.customerio import FakeCustomerIO
from tests.conftest import APP_KEY, PIPELINES_KEY
from tests.support import REGION

SECRET = {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY, "region": "us"}


def run(argv: list[str], env: dict[str, str], aws: cli_aws.Aws | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = cli_main(argv, out=out, environ=env, aws=aws)
    return code, out.getvalue()


def secret_env(fake: FakeCustomerIO, secret: dict[str, Any] | str, **extra: str) -> dict[str, str]:
    value = secret if isinstance(secret, str) else json.dumps(secret)
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(Name="cio", SecretString=value)[
        "ARN"
    ]
    return {
        "CUSTOMERIO_SECRET_ID": arn,
        "CUSTOMERIO_PIPELINES_URL": fake.pipelines_url,
        "CUSTOMERIO_APP_URL": fake.app_url,
        **extra,
    }


# ---- doctor ---------------------------------------------------------------------------------


def test_doctor_good_secret_passes_every_check(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret with both keys the fake Customer.io accepts
    env = secret_env(fake_cio, SECRET)

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN every line is a pass, the key checks reached Customer.io, and nothing was created there
    assert code == 0, output
    lines = output.splitlines()
    assert all(line.startswith("✓") for line in lines[:-1])
    assert lines[-1] == "doctor: all 6 checks passed"
    assert "App API key accepted" in output
    assert "Pipelines key accepted" in output
    assert "400 as expected, nothing created" in output
    assert fake_cio.pipelines_calls() == []
    assert [r.path for r in fake_cio.requests] == ["/v1/batch", "/v1/segments"]
    assert fake_cio.requests[0].strict


def test_doctor_rejected_keys_fail_with_the_fix_and_never_print_a_key(aws: None) -> None:
    # GIVEN a Customer.io that knows other keys than the secret holds
    secret = {"pipelines_api_key": "pk-WRONG-1234", "app_api_key": "app-WRONG-5678"}
    with FakeCustomerIO(pipelines_api_key="pk-right", app_api_key="app-right") as fake:
        env = secret_env(fake, secret)

        # WHEN doctor runs
        code, output = run(["doctor"], env)

    # THEN it fails, says which key and how to fix it, and prints no key value
    assert code == 1
    assert "✗ App API key rejected" in output
    assert "✗ Pipelines key rejected" in output
    assert "fix: put an App API key" in output
    assert "fix: put the API key of your Data Pipelines HTTP source" in output
    for value in ("pk-WRONG-1234", "app-WRONG-5678", "pk-right", "app-right"):
        assert value not in output
    assert output.splitlines()[-1] == "doctor: 2 of 6 checks failed"


def test_doctor_missing_secret_names_the_fix(aws: None) -> None:
    # GIVEN a secret id that does not exist
    env = {"CUSTOMERIO_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"}

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN the secret line fails with ResourceNotFoundException and what to do
    assert code == 1
    assert "✗ secret arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf not readable" in output
    assert "(ResourceNotFoundException) — fix: create the secret" in output


def test_doctor_secret_that_is_not_json_says_what_to_store(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret holding plain text
    env = secret_env(fake_cio, "just-a-key")

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN it fails on the secret's shape, without echoing its content
    assert code == 1
    assert "is not a JSON object — fix: store {" in output
    assert "just-a-key" not in output


def test_doctor_secret_without_app_key_fails_both_functions(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret with only the Pipelines key
    env = secret_env(fake_cio, {"pipelines_api_key": PIPELINES_KEY})

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN each function that needs the App key says so, and the Pipelines key still checks out
    assert code == 1
    assert '✗ EventsFunction lacks credentials it needs — fix: add "app_api_key" to secret' in output
    assert "✗ EmailFunction lacks credentials it needs" in output
    assert "✓ Pipelines key accepted" in output


def test_doctor_region_mismatch_fails(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret for an EU workspace, a function configured for US and a US App URL override
    env = secret_env(
        fake_cio,
        {**SECRET, "region": "eu"},
        CUSTOMERIO_REGION="us",
        CUSTOMERIO_APP_URL="https://api.customer.io",
    )
    env["CUSTOMERIO_PIPELINES_URL"] = fake_cio.pipelines_url

    # WHEN the region is checked (no network needed for this line)
    settings = load_settings(env)
    secret = cli_doctor.read_secret(cli_aws.Aws(), settings)
    check = cli_doctor.region_check(settings, env, secret)

    # THEN it names both inconsistencies
    assert not check.ok
    assert "the secret says eu but CUSTOMERIO_REGION is us" in (check.fix or "")
    assert "CUSTOMERIO_APP_URL is a us host but the region is eu" in (check.fix or "")


def test_doctor_local_env_credentials_without_a_secret(fake_cio: FakeCustomerIO) -> None:
    # GIVEN no secret id, the local-run variables instead
    env = {
        "CUSTOMERIO_PIPELINES_API_KEY": PIPELINES_KEY,
        "CUSTOMERIO_APP_TOKEN": APP_KEY,
        "CUSTOMERIO_PIPELINES_URL": fake_cio.pipelines_url,
        "CUSTOMERIO_APP_URL": fake_cio.app_url,
    }

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN it says where the credentials come from and passes
    assert code == 0, output
    assert output.startswith("✓ CUSTOMERIO_SECRET_ID is not set")


def test_doctor_connector_check_explains_a_refused_body(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN good credentials
    env = secret_env(fake_cio, SECRET)

    # WHEN the connector check posts an invalid identify to the configured Pipelines host
    code, output = run(
        [
            "doctor",
            "--check-url",
            f"{fake_cio.pipelines_url}/v1/identify",
            "--method",
            "POST",
            "--data",
            "{}",
        ],
        env,
    )

    # THEN it reports status, latency and meaning; the call carried the Pipelines auth in strict mode
    assert code == 0, output
    line = output.splitlines()[-2]
    assert line.startswith(f"✓ POST {fake_cio.pipelines_url}/v1/identify: 400 in ")
    assert "reachable and authenticated; the request itself was refused" in line
    assert "userId or anonymousId is required" in line
    sent = fake_cio.requests_to("/v1/identify")[0]
    assert sent.headers["authorization"] == fake_cio.pipelines_auth_header()
    assert sent.strict


def test_doctor_connector_check_never_sends_credentials_to_an_unknown_host(aws: None) -> None:
    # GIVEN credentials configured for one host, and a check aimed at another
    with FakeCustomerIO() as configured, FakeCustomerIO() as other:
        env = secret_env(configured, SECRET)
        env["CUSTOMERIO_PIPELINES_URL"] = configured.pipelines_url.replace("127.0.0.1", "localhost")
        env["CUSTOMERIO_APP_URL"] = configured.app_url.replace("127.0.0.1", "localhost")
        settings = load_settings(env)
        credentials = cli_doctor._credentials(settings, cli_doctor.read_secret(cli_aws.Aws(), settings))
        transport = Transport(connect_timeout=1, read_timeout=2)

        # WHEN the connector check runs against the other host
        check = cli_doctor.connector_check(
            transport,
            settings,
            credentials,
            url=f"{other.app_url}/v1/segments",
            method="GET",
            data=None,
            auth="auto",
        )

        # THEN the request went out without an Authorization header, and the 401 says so
        assert "authorization" not in other.requests[0].headers
        assert not check.ok
        assert "credentials (none) rejected" in check.what


def test_doctor_unreachable_customerio_says_to_check_egress(aws: None) -> None:
    # GIVEN URLs on a port nothing listens on
    with FakeCustomerIO() as fake:
        env = secret_env(fake, SECRET)
    # (the fake is stopped: its port is closed now)

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN both API checks fail with the egress fix
    assert code == 1
    assert output.count("not reachable") == 2
    assert "fix: allow HTTPS egress to 127.0.0.1" in output


class FakeAws(cli_aws.Aws):
    """A deployed stack as CloudFormation and Lambda would describe it."""

    def __init__(self, resources: dict[str, str], environments: dict[str, dict[str, str]]) -> None:
        super().__init__(region=REGION)
        self.resources = resources
        self.environments = environments

    def stack_resources(self, stack: str) -> dict[str, str]:
        return self.resources

    def function_environment(self, name: str) -> dict[str, str]:
        return self.environments[name]


def test_doctor_stack_reads_each_functions_own_environment(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a deployed stack whose EmailFunction points at a secret without an App key
    good = secret_env(fake_cio, SECRET)
    bad_arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="email-only", SecretString=json.dumps({"pipelines_api_key": PIPELINES_KEY})
    )["ARN"]
    fake_aws = FakeAws(
        {"EventsFunction": "s-events", "EmailFunction": "s-email"},
        {"s-events": good, "s-email": {**good, "CUSTOMERIO_SECRET_ID": bad_arn}},
    )

    # WHEN doctor runs with --stack
    code, output = run(["doctor", "--stack", "s"], {}, aws=fake_aws)

    # THEN EventsFunction passes and EmailFunction fails on its own secret
    assert code == 1
    assert "✓ EventsFunction has the credentials it needs" in output
    assert "✗ EmailFunction lacks credentials it needs" in output


# ---- dead-letter queues ---------------------------------------------------------------------


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto as a server: StartMessageMoveTask answers 500 there, as an unsupported endpoint would."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    urllib3.request("POST", f"{url}/moto-api/reset")  # moto's state is per process, not per server
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    yield url
    urllib3.request("POST", f"{url}/moto-api/reset")
    server.stop()


def queue_pair(sqs: Any, name: str = "events") -> tuple[str, str]:
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
    source = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    return source, dlq


def dead_letter(sqs: Any, dlq: str, body: dict[str, Any], reason: str | None = None) -> None:
    attributes = {"IdempotencyKey": {"DataType": "String", "StringValue": "key-1"}}
    if reason:
        attributes["FailureReason"] = {"DataType": "String", "StringValue": reason}
        attributes["FailureStatus"] = {"DataType": "String", "StringValue": "400"}
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(body), MessageAttributes=attributes)


def test_dlq_list_counts_each_queue(moto_server: str) -> None:
    # GIVEN two dead-letter queues, one with two messages
    sqs = boto3.client("sqs", region_name=REGION)
    _, events_dlq = queue_pair(sqs, "events")
    _, email_dlq = queue_pair(sqs, "email")
    dead_letter(sqs, events_dlq, {"type": "identify", "userId": "u1"})
    dead_letter(sqs, events_dlq, {"type": "identify", "userId": "u2"})

    # WHEN dlq list runs
    code, output = run(["dlq", "list"], {"EVENTS_DLQ_URL": events_dlq, "EMAIL_DLQ_URL": email_dlq})

    # THEN each queue has its count
    assert code == 0
    assert output.splitlines() == [
        f"events  {'events-dlq':<40} 2 message(s)",
        f"email   {'email-dlq':<40} 0 message(s)",
    ]


def test_dlq_show_gives_reasons_without_personal_data_and_consumes_nothing(moto_server: str) -> None:
    # GIVEN a message the function dead-lettered and one SQS moved, both holding an email address
    sqs = boto3.client("sqs", region_name=REGION)
    _, dlq = queue_pair(sqs)
    dead_letter(
        sqs, dlq, {"type": "track", "event": "order_completed", "userId": "ada@example.com"}, "event: bad"
    )
    dead_letter(sqs, dlq, {"batch": [{"type": "identify", "userId": "ada@example.com"}]})

    # WHEN dlq show runs without --bodies
    code, output = run(["dlq", "show", "events"], {"EVENTS_DLQ_URL": dlq})

    # THEN reasons and a summary are shown, the address is not, and the messages are still there
    assert code == 0
    assert "showing 2 of 2" in output
    assert "reason: [400] event: bad" in output
    assert "what:   track 'order_completed'" in output
    assert "reason: moved by SQS after maxReceiveCount receives" in output
    assert "what:   batch of 1: identify" in output
    assert "ada@example.com" not in output
    assert cli_dlq.depth(sqs, dlq) == (2, 0)


def test_dlq_show_bodies_are_truncated(moto_server: str) -> None:
    # GIVEN a large dead-lettered body
    sqs = boto3.client("sqs", region_name=REGION)
    _, dlq = queue_pair(sqs)
    body = {"type": "identify", "userId": "u1", "traits": {"note": "x" * 500}}
    dead_letter(sqs, dlq, body, "too long")

    # WHEN dlq show --bodies --max-chars 40 runs
    _, output = run(["dlq", "show", "--bodies", "--max-chars", "40"], {"EVENTS_DLQ_URL": dlq})

    # THEN the body is cut at 40 characters with its full length
    body_line = next(line for line in output.splitlines() if line.startswith("  body:"))
    assert body_line.endswith(f"... ({len(json.dumps(body))} chars)")
    assert len(body_line.removeprefix("  body:   ").split("...")[0]) == 40


def test_dlq_redrive_moves_messages_back_without_their_failure_reason(moto_server: str) -> None:
    # GIVEN two dead-lettered messages, one with an idempotency key, and no StartMessageMoveTask (moto)
    sqs = boto3.client("sqs", region_name=REGION)
    source, dlq = queue_pair(sqs)
    dead_letter(sqs, dlq, {"type": "identify", "userId": "u1"}, "Customer.io answered 400")
    dead_letter(sqs, dlq, {"type": "identify", "userId": "u2"})

    # WHEN dlq redrive runs (the source queue is found through ListDeadLetterSourceQueues)
    code, output = run(["dlq", "redrive", "events"], {"EVENTS_DLQ_URL": dlq})

    # THEN both are back on the source queue with their other attributes, and the DLQ is empty
    assert code == 0, output
    assert "StartMessageMoveTask unavailable" in output
    assert "moved 2 message(s) back to events" in output
    assert cli_dlq.depth(sqs, dlq) == (0, 0)
    moved = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"
    ]
    assert sorted(json.loads(m["Body"])["userId"] for m in moved) == ["u1", "u2"]
    for message in moved:
        assert set(message["MessageAttributes"]) == {"IdempotencyKey", "SourceMessageId"}


def test_dlq_redrive_uses_the_sqs_move_task_when_available() -> None:
    # GIVEN an SQS endpoint that supports StartMessageMoveTask (the one AWS call we force with a Stubber)
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = "https://sqs.us-east-1.amazonaws.com/123456789012/events-dlq"
    source_url = "https://sqs.us-east-1.amazonaws.com/123456789012/events"
    with Stubber(sqs) as stub:
        stub.add_response("receive_message", {"Messages": []})  # the scan for duplicate copies
        for url in (dlq_url, source_url):
            stub.add_response(
                "get_queue_attributes",
                {"Attributes": {"QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{url.rsplit('/', 1)[-1]}"}},
                {"QueueUrl": url, "AttributeNames": ["QueueArn"]},
            )
        stub.add_response(
            "start_message_move_task",
            {"TaskHandle": "task-handle-0123456789abcdefghij"},
            {
                "SourceArn": "arn:aws:sqs:us-east-1:123456789012:events-dlq",
                "DestinationArn": "arn:aws:sqs:us-east-1:123456789012:events",
            },
        )
        out = io.StringIO()

        # WHEN the DLQ is redriven
        code = cli_dlq.dlq_redrive(sqs, cli_dlq.QueuePair("events", dlq_url, source_url), out)

    # THEN SQS's own move task was started (new message ids, SQS-speed), nothing moved by hand
    assert code == 0
    assert "SQS move task started" in out.getvalue()


def test_dlq_urls_come_from_the_stack(aws: None) -> None:
    # GIVEN a CloudFormation stack with the template's logical ids, and an output for the DLQ URL
    template = {
        "Resources": {
            "EventsQueue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "s-events"}},
            "EventsDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "s-events-dlq"}},
        },
        "Outputs": {"EventsDeadLetterQueueUrl": {"Value": {"Ref": "EventsDeadLetterQueue"}}},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="s", TemplateBody=json.dumps(template)
    )

    # WHEN dlq list runs with --stack
    code, output = run(["dlq", "list", "--stack", "s"], {})

    # THEN it found the stack's events DLQ (and no email DLQ)
    assert code == 0
    assert output.startswith("events  s-events-dlq")
    assert "email" not in output


def test_dlq_without_configuration_says_how_to_configure() -> None:
    # WHEN no queue is configured
    code, output = run(["dlq", "list"], {})

    # THEN it explains the three ways
    assert code == 2
    assert "--stack NAME, --events-dlq-url or set EVENTS_DLQ_URL" in output


def copy_of(sqs: Any, dlq: str, source_id: str, user: str, reason: str = "Customer.io answered 400") -> None:
    attributes = {
        "SourceMessageId": {"DataType": "String", "StringValue": source_id},
        "FailureReason": {"DataType": "String", "StringValue": reason},
        "FailureStatus": {"DataType": "String", "StringValue": "400"},
    }
    body = json.dumps({"type": "identify", "userId": user})
    sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageAttributes=attributes)


def test_dlq_list_counts_copies_of_one_source_message_once(moto_server: str) -> None:
    # GIVEN two dead-letter copies of one message (a crash between the copy and the answer), and another
    sqs = boto3.client("sqs", region_name=REGION)
    _, dlq = queue_pair(sqs)
    copy_of(sqs, dlq, "source-1", "u1")
    copy_of(sqs, dlq, "source-1", "u1")
    copy_of(sqs, dlq, "source-2", "u2")

    # WHEN dlq list runs
    code, output = run(["dlq", "list"], {"EVENTS_DLQ_URL": dlq})

    # THEN it counts two messages and names the extra copy, and consumes nothing
    assert code == 0
    assert output.splitlines() == [
        f"events  {'events-dlq':<40} 2 message(s) (+1 duplicate copies, not counted)"
    ]
    assert cli_dlq.depth(sqs, dlq) == (3, 0)


def test_dlq_redrive_moves_copies_of_one_source_message_back_once(moto_server: str) -> None:
    # GIVEN two dead-letter copies of one message and a copy of another
    sqs = boto3.client("sqs", region_name=REGION)
    source, dlq = queue_pair(sqs)
    copy_of(sqs, dlq, "source-1", "u1")
    copy_of(sqs, dlq, "source-1", "u1", reason="gave up after 10 receives")
    copy_of(sqs, dlq, "source-2", "u2")

    # WHEN dlq redrive runs
    code, output = run(["dlq", "redrive", "events"], {"EVENTS_DLQ_URL": dlq})

    # THEN each source message is back once, still naming its source, and the DLQ is empty
    assert code == 0, output
    assert "deleted 1 duplicate copies" in output
    assert "moved 2 message(s) back" in output
    moved = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"
    ]
    assert sorted(m["MessageAttributes"]["SourceMessageId"]["StringValue"] for m in moved) == [
        "source-1",
        "source-2",
    ]
    assert cli_dlq.depth(sqs, dlq) == (0, 0)
