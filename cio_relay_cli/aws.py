"""Where the configuration comes from: a deployed stack (CloudFormation, Lambda) or the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

AWS_ERRORS = (BotoCoreError, ClientError)
QUEUES = {
    "events": ("EventsQueue", "EventsDeadLetterQueue"),
    "email": ("EmailQueue", "EmailDeadLetterQueue"),
}
# Which credentials each function needs (EventsFunction also serves search and segments).
NEEDS = {"EventsFunction": ("pipelines", "app"), "EmailFunction": ("app",)}


@dataclass(frozen=True)
class Target:
    """A function's view of the configuration: its environment variables."""

    function: str
    env: Mapping[str, str]


class Aws:
    """boto3 clients for one profile/region (AWS_ENDPOINT_URL is honoured by boto3 itself)."""

    def __init__(self, profile: str | None = None, region: str | None = None) -> None:
        self.session = boto3.session.Session(profile_name=profile, region_name=region)

    def sqs(self) -> SQSClient:
        return self.session.client("sqs")

    def client(self, service: str) -> Any:
        return self.session.client(service)  # type: ignore[call-overload]

    def stack_resources(self, stack: str) -> dict[str, str]:
        """Logical id -> physical id of every resource of a CloudFormation stack."""
        paginator = self.client("cloudformation").get_paginator("list_stack_resources")
        resources: dict[str, str] = {}
        for page in paginator.paginate(StackName=stack):
            for summary in page["StackResourceSummaries"]:
                resources[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId", "")
        return resources

    def stack_queue_urls(self, stack: str) -> dict[str, str]:
        """Queue logical id -> URL from the stack's outputs (`EventsDeadLetterQueueUrl` ...), else its
        resources (an SQS queue's physical id is its URL)."""
        described = self.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
        urls = {
            output["OutputKey"].removesuffix("Url"): output["OutputValue"]
            for output in described.get("Outputs") or []
            if output["OutputKey"].endswith("QueueUrl")
        }
        if all(logical in urls for pair in QUEUES.values() for logical in pair):
            return urls
        return {**self.stack_resources(stack), **urls}

    def function_environment(self, name: str) -> dict[str, str]:
        configuration = self.client("lambda").get_function_configuration(FunctionName=name)
        variables: dict[str, str] = (configuration.get("Environment") or {}).get("Variables") or {}
        return variables


def targets(aws: Aws, stack: str | None, environ: Mapping[str, str]) -> list[Target]:
    """Each function's environment: from Lambda for a deployed stack, else this process's env."""
    if not stack:
        return [Target(function, environ) for function in NEEDS]
    resources = aws.stack_resources(stack)
    return [
        Target(function, aws.function_environment(resources[function]))
        for function in NEEDS
        if function in resources
    ]
