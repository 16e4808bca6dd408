"""Creates in moto what template.yaml declares: queues (with redrive), DynamoDB tables, secrets.

Resources are created on first reference, so `RedrivePolicy: {deadLetterTargetArn: !GetAtt DLQ.Arn}`
creates the dead-letter queue before its source. Resources the local stack does not run (roles, log
groups, alarms, the API itself) get plausible placeholder identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from local_stack.template import Resolver, Template, TemplateError, cfn_string

# CloudFormation property -> SQS queue attribute (the ones that mean something locally).
QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "SqsManagedSseEnabled",
)
TABLE_PROPERTIES = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "ProvisionedThroughput",
)


@dataclass(frozen=True)
class Queue:
    logical_id: str
    name: str
    url: str
    arn: str
    attributes: dict[str, str]

    @property
    def max_receive_count(self) -> int | None:
        policy = self.attributes.get("RedrivePolicy")
        return int(json.loads(policy)["maxReceiveCount"]) if policy else None

    @property
    def dead_letter_arn(self) -> str | None:
        policy = self.attributes.get("RedrivePolicy")
        return str(json.loads(policy)["deadLetterTargetArn"]) if policy else None


class Provisioner:
    """Resolves the template against moto, creating each supported resource once."""

    def __init__(
        self,
        template: Template,
        *,
        clients: Mapping[str, Any],
        parameters: Mapping[str, str],
        stack_name: str,
        region: str,
        secret_string: str,
    ) -> None:
        self.template = template
        self._sqs = clients["sqs"]
        self._dynamodb = clients["dynamodb"]
        self._secrets = clients["secretsmanager"]
        self._secret_string = secret_string
        self.region = region
        self.account = "123456789012"
        self.queues: dict[str, Queue] = {}
        self.tables: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        self._creating: set[str] = set()
        self.resolver = Resolver(
            template.data,
            parameters=parameters,
            pseudo={
                "AWS::StackName": stack_name,
                "AWS::Region": region,
                "AWS::StackId": f"arn:aws:cloudformation:{region}:{self.account}:stack/{stack_name}/local",
            },
            physical=self._ref,
            attribute=self._get_att,
        )
        self.stack_name = stack_name

    def provision(self) -> None:
        """Create every queue, table and secret of the template whose Condition holds."""
        for kind in ("AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::SecretsManager::Secret"):
            for logical_id in self.template.of_type(kind):
                if self.template.included(logical_id, self.resolver):
                    self._ref(logical_id)

    def queue_by_arn(self, arn: str) -> Queue:
        for queue in self.queues.values():
            if queue.arn == arn:
                return queue
        raise TemplateError(f"no queue of the template has the ARN {arn}")

    # ---- Ref / GetAtt ----------------------------------------------------------------------
    def _ref(self, logical_id: str) -> Any:
        kind = self.template.resources[logical_id].get("Type")
        if kind == "AWS::SQS::Queue":
            return self._queue(logical_id).url
        if kind == "AWS::DynamoDB::Table":
            return self._table(logical_id)
        if kind == "AWS::SecretsManager::Secret":
            return self._secret(logical_id)
        properties = self.template.resources[logical_id].get("Properties") or {}
        for key in ("FunctionName", "Name", "RoleName", "LogGroupName"):
            if key in properties:
                return cfn_string(self.resolver.resolve(properties[key]))
        return f"{self.stack_name}-{logical_id}"

    def _get_att(self, logical_id: str, attribute: str) -> Any:
        kind = self.template.resources[logical_id].get("Type")
        if kind == "AWS::SQS::Queue":
            queue = self._queue(logical_id)
            values = {"Arn": queue.arn, "QueueUrl": queue.url, "QueueName": queue.name}
            if attribute in values:
                return values[attribute]
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return f"arn:aws:dynamodb:{self.region}:{self.account}:table/{self._table(logical_id)}"
        if attribute == "Arn":
            service = str(kind).split("::")[1].lower() if kind and "::" in kind else "local"
            return f"arn:aws:{service}:{self.region}:{self.account}:{self._ref(logical_id)}"
        return f"{self._ref(logical_id)}.{attribute}"

    # ---- resources -------------------------------------------------------------------------
    def _properties(self, logical_id: str) -> dict[str, Any]:
        if logical_id in self._creating:
            raise TemplateError(f"circular reference through {logical_id}")
        self._creating.add(logical_id)
        try:
            properties: dict[str, Any] = self.resolver.resolve(
                self.template.resources[logical_id].get("Properties") or {}
            )
        finally:
            self._creating.discard(logical_id)
        return properties

    def _queue(self, logical_id: str) -> Queue:
        if logical_id in self.queues:
            return self.queues[logical_id]
        properties = self._properties(logical_id)
        name = cfn_string(properties.get("QueueName") or f"{self.stack_name}-{logical_id}")
        attributes: dict[str, str] = {}
        for key in QUEUE_ATTRIBUTES:
            if key not in properties:
                continue
            value = properties[key]
            if isinstance(value, dict):
                value = json.dumps({k: v if isinstance(v, list) else cfn_string(v) for k, v in value.items()})
            attributes[key] = cfn_string(value)
        url = self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        queue = Queue(logical_id=logical_id, name=name, url=url, arn=arn, attributes=attributes)
        self.queues[logical_id] = queue
        return queue

    def _table(self, logical_id: str) -> str:
        if logical_id in self.tables:
            return self.tables[logical_id]
        properties = self._properties(logical_id)
        name = cfn_string(properties.get("TableName") or f"{self.stack_name}-{logical_id}")
        arguments = {key: properties[key] for key in TABLE_PROPERTIES if key in properties}
        billing = properties.get(
            "BillingMode", "PROVISIONED" if "ProvisionedThroughput" in arguments else None
        )
        self._dynamodb.create_table(
            TableName=name, BillingMode=billing or "PAY_PER_REQUEST", **_numbers(arguments)
        )
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and cfn_string(ttl.get("Enabled", "false")) == "true":
            self._dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": str(ttl["AttributeName"])},
            )
        self.tables[logical_id] = name
        return name

    def _secret(self, logical_id: str) -> str:
        if logical_id in self.secrets:
            return self.secrets[logical_id]
        properties = self._properties(logical_id)
        name = cfn_string(properties.get("Name") or f"{self.stack_name}/{logical_id}")
        arn = self.create_secret(name)
        self.secrets[logical_id] = arn
        return arn

    def create_secret(self, name: str) -> str:
        """A secret holding the local Customer.io credentials (docs/design.md's JSON); returns its ARN."""
        arn: str = self._secrets.create_secret(Name=name, SecretString=self._secret_string)["ARN"]
        return arn


def _numbers(arguments: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB wants integers where the template holds numbers as strings (ProvisionedThroughput)."""

    def convert(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: convert(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if key.endswith("Units") or key == "NonKeyAttributes":
            return int(value) if key.endswith("Units") else value
        return value

    converted: dict[str, Any] = convert(arguments)
    return converted
