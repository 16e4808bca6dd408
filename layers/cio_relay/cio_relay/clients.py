"""The AWS clients the functions use: one per service and container, built on first use.

Every client has short connect/read timeouts and a bounded number of attempts, so a hung AWS endpoint
fails the call well within the function's timeout instead of waiting out botocore's 60 s defaults.
Worst case for one call: MAX_ATTEMPTS x (CONNECT + READ) plus the retry backoff (at most 1 s, then 2 s).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from botocore.config import Config
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_secretsmanager.client import SecretsManagerClient
    from mypy_boto3_sqs.client import SQSClient

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
MAX_ATTEMPTS = 3  # botocore "standard" mode: the first attempt and two retries
# The standard mode's backoff before the 2nd and 3rd attempts: random up to 2**(attempt-1) s.
MAX_BACKOFF_SECONDS = 1.0 + 2.0
WORST_CASE_CALL_SECONDS = (
    MAX_ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + MAX_BACKOFF_SECONDS
)
# Connections kept per client; delivery changes visibility from a few threads at once.
MAX_POOL_CONNECTIONS = 16


def client_config(pool: int = MAX_POOL_CONNECTIONS) -> Config:
    from botocore.config import Config  # noqa: PLC0415 - botocore is imported on first use only

    return Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=pool,
    )


@cache
def client(service: str, pool: int = MAX_POOL_CONNECTIONS) -> Any:
    """The container's client for `service` (AWS_ENDPOINT_URL and the region come from boto3 itself)."""
    import boto3  # noqa: PLC0415 - boto3 costs tens of ms of cold start; built when first needed

    return boto3.client(service, config=client_config(pool))  # type: ignore[call-overload]


def sqs() -> SQSClient:
    result: SQSClient = client("sqs")
    return result


def secretsmanager() -> SecretsManagerClient:
    result: SecretsManagerClient = secrets_provider().client
    return result


def dynamodb(pool: int = MAX_POOL_CONNECTIONS) -> DynamoDBClient:
    result: DynamoDBClient = client("dynamodb", pool)
    return result


@cache
def secrets_provider() -> SecretsProvider:
    """Powertools' Secrets Manager provider (cache, max_age, transforms) with the same client settings."""
    from aws_lambda_powertools.utilities.parameters import SecretsProvider  # noqa: PLC0415

    return SecretsProvider(boto_config=client_config())


def reset() -> None:
    """Forget every client (tests, and a changed AWS_ENDPOINT_URL)."""
    client.cache_clear()
    secrets_provider.cache_clear()
