"""Fixtures: an isolated environment, moto-backed AWS, the fake Customer.io, a Lambda context."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from cio_relay import cio, clients, forwarding, settings, transactional
from moto import mock_aws

from local_stack.customerio import FakeCustomerIO
from tests.support import REGION, LambdaContext

PIPELINES_KEY = "pk-test-pipelines"
APP_KEY = "app-test-key"


def reset_caches() -> None:
    """Forget every per-container cache of the layer (settings, clients, credentials, secrets)."""
    settings.get_settings.cache_clear()
    cio.get_customerio.cache_clear()
    forwarding.get_forwarder.cache_clear()
    clients.reset()
    transactional.reset()
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real AWS, no real Customer.io, no leftover configuration between tests."""
    for name in (
        "CUSTOMERIO_SECRET_ID",
        "CUSTOMERIO_REGION",
        "CUSTOMERIO_PIPELINES_URL",
        "CUSTOMERIO_APP_URL",
        "CUSTOMERIO_TRACK_URL",
        "CUSTOMERIO_PIPELINES_API_KEY",
        "CUSTOMERIO_SITE_ID",
        "CUSTOMERIO_TRACK_TOKEN",
        "CUSTOMERIO_APP_TOKEN",
        "EVENTS_QUEUE_URL",
        "EMAIL_QUEUE_URL",
        "EVENTS_DLQ_URL",
        "EMAIL_DLQ_URL",
        "IDEMPOTENCY_TABLE",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
        "TRACING_ENABLED",
        "EVENT_NAME_POLICY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CioRelay")
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    monkeypatch.setenv("CUSTOMERIO_READ_TIMEOUT", "2")
    monkeypatch.setenv("CUSTOMERIO_CONNECT_TIMEOUT", "1")
    reset_caches()
    yield
    reset_caches()


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def fake_cio() -> Iterator[FakeCustomerIO]:
    """The fake Customer.io on 127.0.0.1 (Pipelines, App and Track listeners), with the test keys."""
    with FakeCustomerIO(pipelines_api_key=PIPELINES_KEY, app_api_key=APP_KEY) as fake:
        yield fake


@dataclass
class Stack:
    """What template.yaml declares, created in moto: queues with redrive, the secret, the table."""

    sqs: Any
    events_queue_url: str
    events_queue_arn: str
    events_dlq_url: str
    email_queue_url: str
    email_queue_arn: str
    email_dlq_url: str
    secret_arn: str
    idempotency_table: str

    def receive(
        self, queue_url: str, *, max_messages: int = 10, visibility: int = 30
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            VisibilityTimeout=visibility,
        ).get("Messages", [])
        return messages

    def depth(self, queue_url: str) -> dict[str, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {
            "visible": int(attrs["ApproximateNumberOfMessages"]),
            "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        }


def create_stack(*, max_receive_count: int = 5, secret: dict[str, str] | None = None) -> Stack:
    sqs = boto3.client("sqs", region_name=REGION)

    def queue_pair(name: str) -> tuple[str, str, str]:
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
        url = sqs.create_queue(
            QueueName=name, Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "180"}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn, dlq_url

    events_url, events_arn, events_dlq = queue_pair("cio-relay-events")
    email_url, email_arn, email_dlq = queue_pair("cio-relay-email")
    secret_value = (
        secret if secret is not None else {"pipelines_api_key": PIPELINES_KEY, "app_api_key": APP_KEY}
    )
    secret_arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="cio-relay/customerio", SecretString=json.dumps(secret_value)
    )["ARN"]
    table = "cio-relay-idempotency"
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    return Stack(sqs, events_url, events_arn, events_dlq, email_url, email_arn, email_dlq, secret_arn, table)


@pytest.fixture
def aws() -> Iterator[None]:
    """In-process moto for every AWS call in the test."""
    with mock_aws():
        yield


def wire_stack(
    monkeypatch: pytest.MonkeyPatch, customerio: FakeCustomerIO, *, secret: dict[str, str] | None = None
) -> Stack:
    """Create the stack in moto and point the functions' environment at it and at the fake's listeners."""
    created = create_stack(secret=secret)
    monkeypatch.setenv("CUSTOMERIO_SECRET_ID", created.secret_arn)
    for name, url in customerio.environment().items():
        monkeypatch.setenv(name, url)
    monkeypatch.setenv("EVENTS_QUEUE_URL", created.events_queue_url)
    monkeypatch.setenv("EVENTS_DLQ_URL", created.events_dlq_url)
    monkeypatch.setenv("EMAIL_QUEUE_URL", created.email_queue_url)
    monkeypatch.setenv("EMAIL_DLQ_URL", created.email_dlq_url)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", created.idempotency_table)
    monkeypatch.setenv("RETRY_BASE_SECONDS", "30")
    monkeypatch.setenv("RETRY_CAP_SECONDS", "900")
    reset_caches()
    return created


@pytest.fixture
def stack(aws: None, fake_cio: FakeCustomerIO, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """moto resources + the fake Customer.io, wired into the environment the functions read."""
    return wire_stack(monkeypatch, fake_cio)
