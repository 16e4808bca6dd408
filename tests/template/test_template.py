"""template.yaml: what cfn-lint cannot see, checked on the SAM source and on the SAM transform.

cfn-lint 1.x validates SAM templates against SAM's schema without running the transform, so it
accepts `FunctionResponseTypes: [ReportBogus]`, a function timeout longer than the queue's
visibility timeout, a `Ref` to a resource that does not exist and a `"*"` resource. Each check below
is a function that returns the problems it finds; the positive tests run it on template.yaml and the
negative tests (test_checks_catch_broken_templates, test_transformed_checks_catch_*) prove it fails
on a template broken on purpose.

The template starts with the AWS::LanguageExtensions transform, which CloudFormation runs before the
SAM transform and which resolves Fn::If on conditions that depend on parameters only.
`language_extensions()` below does the same, so the SAM translator sees what it sees in
CloudFormation.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from samtranslator.translator.transform import transform

from local_stack.template import CfnLoader
from tests.template import check_build_arch

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"

Template = dict[str, Any]

EXAMPLE_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cio-relay/customerio-AbCdEf"
EXAMPLE_KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0f6a6b8e-1234-4cde-9abc-0123456789ab"

FUNCTIONS = ("EventsFunction", "EmailFunction")
SOURCE_TO_DLQ = {"EventsQueue": "EventsDeadLetterQueue", "EmailQueue": "EmailDeadLetterQueue"}
QUEUE_OF_FUNCTION = {"EventsFunction": "EventsQueue", "EmailFunction": "EmailQueue"}
SQS_MAX_RETENTION = 1_209_600  # 14 days
MIN_MAX_RECEIVE_COUNT = 5  # AWS guidance for SQS event sources

EXPECTED_ROUTES = {
    ("EventsFunction", "POST", "/v1/identify"),
    ("EventsFunction", "POST", "/v1/track"),
    ("EventsFunction", "POST", "/v1/page"),
    ("EventsFunction", "POST", "/v1/screen"),
    ("EventsFunction", "POST", "/v1/group"),
    ("EventsFunction", "POST", "/v1/alias"),
    ("EventsFunction", "POST", "/v1/batch"),
    ("EventsFunction", "DELETE", "/v1/customers/{id}"),
    ("EventsFunction", "POST", "/v1/customers"),
    ("EventsFunction", "GET", "/v1/segments"),
    ("EmailFunction", "POST", "/v1/send/email"),
    ("EmailFunction", "POST", "/v1/send/push"),
    ("EmailFunction", "POST", "/v1/send/sms"),
}

EXPECTED_ENVIRONMENT = {
    "CUSTOMERIO_SECRET_ID",
    "CUSTOMERIO_REGION",
    "CUSTOMERIO_PIPELINES_URL",
    "CUSTOMERIO_APP_URL",
    "CUSTOMERIO_CONNECT_TIMEOUT",
    "CUSTOMERIO_READ_TIMEOUT",
    "EVENTS_QUEUE_URL",
    "EMAIL_QUEUE_URL",
    "EVENTS_DLQ_URL",
    "EMAIL_DLQ_URL",
    "IDEMPOTENCY_TABLE",
    "IDEMPOTENCY_TTL_SECONDS",
    "RETRY_BASE_SECONDS",
    "RETRY_CAP_SECONDS",
    "EVENT_NAME_POLICY",
    "JOURNEYS_LIMITS_POLICY",
    "CUSTOMERIO_TRACK_URL",
    "TRACING_ENABLED",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
SERVICE_NAMES = {"EventsFunction": "cio-relay-events", "EmailFunction": "cio-relay-email"}

EXPECTED_OUTPUTS = {
    "ApiUrl",
    "ApiKeyId",
    "CustomDomainUrl",
    "EventsQueueUrl",
    "EventsQueueArn",
    "EmailQueueUrl",
    "EmailQueueArn",
    "EventsDeadLetterQueueUrl",
    "EmailDeadLetterQueueUrl",
    "IdempotencyTableName",
    "SecretArn",
}

# X-Ray has no resource-level permissions: the one place a "*" resource is unavoidable.
XRAY_WRITE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# AWS managed policies allowed on a role (logical id -> policy ARN as shown by show()).
ALLOWED_MANAGED_POLICIES = {
    "ApiGatewayCloudWatchRole": {
        "Sub:arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
    },
}
PSEUDO_PARAMETERS = {
    "AWS::AccountId",
    "AWS::NotificationARNs",
    "AWS::NoValue",
    "AWS::Partition",
    "AWS::Region",
    "AWS::StackId",
    "AWS::StackName",
    "AWS::URLSuffix",
}


# --------------------------------------------------------------------------- loading


def load_template(path: Path = TEMPLATE_PATH) -> Template:
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=CfnLoader)
    assert isinstance(loaded, dict)
    return loaded


@cache
def _pristine_template() -> str:
    return json.dumps(load_template())


@pytest.fixture
def template() -> Template:
    """A fresh, mutable copy of template.yaml for each test."""
    loaded: Template = json.loads(_pristine_template())
    return loaded


# --------------------------------------------------------------------------- intrinsic helpers


def show(value: Any) -> str:
    """A short, comparable spelling of a value that may be an intrinsic function."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return f"Ref:{arg}"
        if key == "Fn::GetAtt":
            return ".".join(arg) if isinstance(arg, list) else str(arg)
        if key == "Fn::Sub":
            return f"Sub:{arg if isinstance(arg, str) else arg[0]}"
    return json.dumps(value, sort_keys=True)


def literal_text(value: Any) -> str | None:
    """The literal text of a string, !Sub or !Join (None for Ref/GetAtt, whose value AWS decides)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Fn::Sub":
            return arg if isinstance(arg, str) else str(arg[0])
        if key == "Fn::Join":
            return str(arg[0]).join(part for part in arg[1] if isinstance(part, str))
    return None


def getatt_target(value: Any, attribute: str) -> str | None:
    """The logical id in {"Fn::GetAtt": [id, attribute]}, else None."""
    if isinstance(value, dict) and list(value) == ["Fn::GetAtt"]:
        logical_id, attr = value["Fn::GetAtt"]
        if attr == attribute:
            return str(logical_id)
    return None


def ref_target(value: Any) -> str | None:
    if isinstance(value, dict) and list(value) == ["Ref"]:
        return str(value["Ref"])
    return None


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def parameter_values(t: Template, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Parameter defaults (CloudFormation passes every value as a string), plus required ones."""
    values = {name: str(p["Default"]) for name, p in t.get("Parameters", {}).items() if "Default" in p}
    values["CustomerIoSecretArn"] = EXAMPLE_SECRET_ARN
    values.update(overrides or {})
    return values


def resolve(value: Any, params: dict[str, str]) -> Any:
    """A !Ref to a parameter becomes the parameter's value; anything else is returned as is."""
    name = ref_target(value)
    if name is not None and name in params:
        return params[name]
    return value


def evaluate_condition(expr: Any, conditions: dict[str, Any], params: dict[str, str]) -> bool:
    def operand(value: Any) -> str:
        resolved = resolve(value, params)
        if isinstance(resolved, bool):
            return str(resolved).lower()
        return str(resolved)

    if not isinstance(expr, dict) or len(expr) != 1:
        raise ValueError(f"unsupported condition {expr!r}")
    ((key, arg),) = expr.items()
    if key == "Fn::Equals":
        return operand(arg[0]) == operand(arg[1])
    if key == "Fn::Not":
        return not evaluate_condition(arg[0], conditions, params)
    if key == "Fn::And":
        return all(evaluate_condition(item, conditions, params) for item in arg)
    if key == "Fn::Or":
        return any(evaluate_condition(item, conditions, params) for item in arg)
    if key == "Condition":
        return evaluate_condition(conditions[arg], conditions, params)
    raise ValueError(f"unsupported condition function {key}")


def condition_values(t: Template, params: dict[str, str]) -> dict[str, bool]:
    conditions = t.get("Conditions", {})
    return {name: evaluate_condition(expr, conditions, params) for name, expr in conditions.items()}


_NO_VALUE = object()


def _resolve_ifs(node: Any, truth: dict[str, bool]) -> Any:
    if isinstance(node, dict):
        if list(node) == ["Fn::If"]:
            name, when_true, when_false = node["Fn::If"]
            return _resolve_ifs(when_true if truth[name] else when_false, truth)
        if node == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        resolved = {key: _resolve_ifs(value, truth) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}
    if isinstance(node, list):
        return [item for item in (_resolve_ifs(value, truth) for value in node) if item is not _NO_VALUE]
    return node


def language_extensions(t: Template, params: dict[str, str]) -> Template:
    """What the AWS::LanguageExtensions transform hands to the SAM transform: Fn::If resolved."""
    truth = condition_values(t, params)
    body = {key: value for key, value in t.items() if key not in ("Conditions", "Transform")}
    resolved: Template = _resolve_ifs(copy.deepcopy(body), truth)
    resolved["Conditions"] = copy.deepcopy(t.get("Conditions", {}))
    transforms = [name for name in as_list(t.get("Transform", [])) if name != "AWS::LanguageExtensions"]
    resolved["Transform"] = transforms[0] if len(transforms) == 1 else transforms
    return resolved


def present_resources(t: Template, params: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Resources CloudFormation would create for these parameter values."""
    truth = condition_values(t, params)
    return {
        logical_id: resource
        for logical_id, resource in t["Resources"].items()
        if "Condition" not in resource or truth[resource["Condition"]]
    }


class _NoManagedPolicies:
    """ManagedPolicyLoader stand-in: the template names no managed policy by name (no IAM call)."""

    def load(self) -> dict[str, str]:
        return {}


def sam_transform(t: Template, params: dict[str, str]) -> Template:
    """Run aws-sam-translator the way CloudFormation does after AWS::LanguageExtensions."""
    source = language_extensions(t, params)
    for resource in source["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):  # what `sam package` does to local paths
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://cio-relay-artifacts/{properties[key].strip('/')}.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        result: Template = transform(source, dict(params), _NoManagedPolicies())
    return result


# --------------------------------------------------------------------------- template queries


def resources_of_type(t: Template, resource_type: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in t["Resources"].items() if r.get("Type") == resource_type}


def properties(t: Template, logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = t["Resources"][logical_id].get("Properties", {})
    return props


def function_setting(t: Template, function_id: str, key: str, default: Any = None) -> Any:
    props = properties(t, function_id)
    if key in props:
        return props[key]
    return t.get("Globals", {}).get("Function", {}).get(key, default)


def function_events(t: Template, event_type: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for function_id in resources_of_type(t, "AWS::Serverless::Function"):
        for name, event in properties(t, function_id).get("Events", {}).items():
            if event.get("Type") == event_type:
                yield function_id, name, event.get("Properties", {})


def queues(t: Template) -> dict[str, dict[str, Any]]:
    return {lid: r.get("Properties", {}) for lid, r in resources_of_type(t, "AWS::SQS::Queue").items()}


def _flatten_statements(node: Any) -> Iterator[dict[str, Any]]:
    """Policy statements, with both branches of any Fn::If (the check must hold for every value)."""
    if isinstance(node, list):
        for item in node:
            yield from _flatten_statements(item)
    elif isinstance(node, dict):
        if list(node) == ["Fn::If"]:
            yield from _flatten_statements(node["Fn::If"][1])
            yield from _flatten_statements(node["Fn::If"][2])
        elif node != {"Ref": "AWS::NoValue"}:
            yield node


def policy_statements(t: Template) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM and resource policy statement in the template."""
    for logical_id, resource in t["Resources"].items():
        kind = resource.get("Type")
        props = resource.get("Properties", {})
        documents: list[tuple[str, Any]] = []
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                documents.append(
                    (f"{logical_id}/{policy.get('PolicyName')}", policy.get("PolicyDocument", {}))
                )
        elif kind in (
            "AWS::IAM::Policy",
            "AWS::IAM::ManagedPolicy",
            "AWS::SQS::QueuePolicy",
            "AWS::SNS::TopicPolicy",
        ):
            documents.append((logical_id, props.get("PolicyDocument", {})))
        elif kind == "AWS::Serverless::Function":
            for policy in as_list(props.get("Policies", [])):
                if isinstance(policy, dict) and "Statement" in policy:
                    documents.append((f"{logical_id}/Policies", policy))
        for where, document in documents:
            for statement in _flatten_statements(document.get("Statement", [])):
                yield where, statement


# --------------------------------------------------------------------------- checks on the SAM source


def sqs_event_problems(t: Template) -> list[str]:
    """Every SQS event reports partial batch failures, batches sensibly and caps its concurrency."""
    params = parameter_values(t)
    problems: list[str] = []
    events = list(function_events(t, "SQS"))
    if {function_id for function_id, _, _ in events} != set(FUNCTIONS):
        problems.append(f"expected one SQS event on each of {FUNCTIONS}, found {events}")
    for function_id, name, props in events:
        where = f"{function_id}.Events.{name}"
        if props.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
            problems.append(f"{where}: FunctionResponseTypes is {props.get('FunctionResponseTypes')!r}")
        batch = int(resolve(props.get("BatchSize", 10), params))
        window = int(resolve(props.get("MaximumBatchingWindowInSeconds", 0), params))
        if batch > 10 and window < 1:
            problems.append(f"{where}: BatchSize {batch} > 10 needs MaximumBatchingWindowInSeconds >= 1")
        concurrency = props.get("ScalingConfig", {}).get("MaximumConcurrency")
        if concurrency is None:
            problems.append(f"{where}: no ScalingConfig.MaximumConcurrency")
        elif int(resolve(concurrency, params)) < 2:
            problems.append(f"{where}: MaximumConcurrency below the minimum of 2")
        queue = getatt_target(props.get("Queue"), "Arn")
        if queue != QUEUE_OF_FUNCTION.get(function_id):
            problems.append(
                f"{where}: reads {props.get('Queue')!r}, expected {QUEUE_OF_FUNCTION.get(function_id)}"
            )
    return problems


def window_values(t: Template, window: Any) -> list[int]:
    """Every batching window a deployment can choose: the parameter's allowed values (or its range's ends)."""
    name = ref_target(window)
    parameter = t["Parameters"].get(name or "", {})
    if not parameter:
        return [int(window)]
    if "AllowedValues" in parameter:
        return [int(v) for v in parameter["AllowedValues"]]
    return sorted({int(parameter.get(k, 0)) for k in ("MinValue", "Default", "MaxValue") if k in parameter})


def visibility_of(t: Template, value: Any, params: dict[str, str]) -> int | None:
    """A VisibilityTimeout: a number, a !Ref, or a !FindInMap keyed by a parameter (None: no such entry)."""
    if isinstance(value, dict) and list(value) == ["Fn::FindInMap"]:
        name, top, second = value["Fn::FindInMap"]
        entry = t.get("Mappings", {}).get(name, {}).get(str(resolve(top, params)), {})
        return None if second not in entry else int(entry[second])
    return int(resolve(value, params))


def visibility_problems(t: Template) -> list[str]:
    """Each queue's visibility timeout is at least 6x the timeout of the function it triggers plus the
    batching window (AWS's guidance for SQS event sources), for every window the template allows."""
    params = parameter_values(t)
    problems: list[str] = []
    all_queues = queues(t)
    for function_id, name, props in function_events(t, "SQS"):
        queue = getatt_target(props.get("Queue"), "Arn")
        if queue not in all_queues:
            problems.append(
                f"{function_id}.Events.{name}: queue {props.get('Queue')!r} is not in the template"
            )
            continue
        timeout = int(resolve(function_setting(t, function_id, "Timeout", 3), params))
        window = props.get("MaximumBatchingWindowInSeconds", 0)
        for seconds in window_values(t, window):
            chosen = {**params, **({ref_target(window) or "": str(seconds)})}
            visibility = visibility_of(t, all_queues[queue].get("VisibilityTimeout", 30), chosen)
            if visibility is None:
                problems.append(f"{queue}: no VisibilityTimeout for a batching window of {seconds} s")
            elif visibility < 6 * timeout + seconds:
                problems.append(
                    f"{queue}: VisibilityTimeout {visibility} < 6 x {function_id} timeout {timeout}"
                    f" + batching window {seconds}"
                )
    return problems


def app_api_throttle_problems(t: Template) -> list[str]:
    """Search and segments (passed through to the App API, 10 requests/s at Customer.io) are throttled
    at the stage to at most that, so callers get API Gateway's 429 instead of Customer.io's."""
    params = parameter_values(t)
    settings = {
        (m.get("ResourcePath"), m.get("HttpMethod")): m
        for m in properties(t, "RelayApi").get("MethodSettings", [])
    }
    problems: list[str] = []
    for function_id, name, props in function_events(t, "Api"):
        if name not in ("SearchCustomers", "ListSegments"):
            continue
        key = ("/" + str(props["Path"]).replace("/", "~1"), str(props["Method"]).upper())
        setting = settings.get(key)
        if setting is None:
            problems.append(f"{function_id}.Events.{name}: no MethodSettings entry {key}")
            continue
        for limit in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
            value = resolve(setting.get(limit), params)
            if value is None or float(value) > 10:
                problems.append(f"{function_id}.Events.{name}: {limit} {value!r} is over the App API's 10/s")
    return problems


def redrive_problems(t: Template) -> list[str]:
    """Every source queue redrives to a dead-letter queue of its own, kept at least as long."""
    params = parameter_values(t)
    problems: list[str] = []
    all_queues = queues(t)
    dlq_of: dict[str, str | None] = {}
    for queue_id, props in all_queues.items():
        policy = props.get("RedrivePolicy")
        if policy is not None:
            dlq_of[queue_id] = getatt_target(policy.get("deadLetterTargetArn"), "Arn")
    dead_letter_queues = {dlq for dlq in dlq_of.values() if dlq}
    for queue_id in all_queues:
        if queue_id not in dead_letter_queues and queue_id not in dlq_of:
            problems.append(f"{queue_id}: no RedrivePolicy (and it is nobody's dead-letter queue)")
    for source, expected_dlq in SOURCE_TO_DLQ.items():
        if dlq_of.get(source) != expected_dlq:
            problems.append(f"{source}: redrives to {dlq_of.get(source)!r}, expected {expected_dlq}")
    for source, dlq in dlq_of.items():
        props = all_queues[source]
        if dlq not in all_queues:
            problems.append(f"{source}: dead-letter target {dlq!r} is not a queue of this template")
            continue
        sharing = sorted(other for other, target in dlq_of.items() if target == dlq)
        if len(sharing) > 1:
            problems.append(f"{dlq}: dead-letter queue shared by {sharing}")
        receives = int(resolve(props["RedrivePolicy"].get("maxReceiveCount", 0), params))
        if receives < MIN_MAX_RECEIVE_COUNT:
            problems.append(f"{source}: maxReceiveCount {receives} < {MIN_MAX_RECEIVE_COUNT}")
        source_retention = int(resolve(props.get("MessageRetentionPeriod", 345_600), params))
        dlq_retention = int(resolve(all_queues[dlq].get("MessageRetentionPeriod", 345_600), params))
        if source_retention != SQS_MAX_RETENTION:
            problems.append(f"{source}: MessageRetentionPeriod {source_retention}, expected 14 days")
        if dlq_retention < source_retention:
            problems.append(f"{dlq}: retention {dlq_retention} shorter than its source's {source_retention}")
        allow = all_queues[dlq].get("RedriveAllowPolicy", {})
        source_name = literal_text(props.get("QueueName"))
        allowed_sources = [literal_text(arn) or "" for arn in allow.get("sourceQueueArns", [])]
        if allow.get("redrivePermission") != "byQueue" or not source_name:
            problems.append(f"{dlq}: RedriveAllowPolicy should be byQueue for its named source {source}")
        elif allowed_sources != [
            f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{source_name}"
        ]:
            problems.append(f"{dlq}: RedriveAllowPolicy sources {allowed_sources} do not name {source}")
    return problems


def _denies_insecure_transport(statement: dict[str, Any]) -> bool:
    condition = statement.get("Condition", {}).get("Bool", {})
    secure = condition.get("aws:SecureTransport")
    return (
        statement.get("Effect") == "Deny"
        and statement.get("Principal") in ("*", {"AWS": "*"})
        and set(as_list(statement.get("Action"))) & {"sqs:*", "*"} != set()
        and str(secure).lower() == "false"
    )


def encryption_problems(t: Template) -> list[str]:
    """Every queue is encrypted at rest and refuses requests that are not TLS."""
    problems: list[str] = []
    tls_only: set[str] = set()
    for policy_id, policy in resources_of_type(t, "AWS::SQS::QueuePolicy").items():
        props = policy.get("Properties", {})
        attached = {ref_target(queue) for queue in props.get("Queues", [])}
        for statement in _flatten_statements(props.get("PolicyDocument", {}).get("Statement", [])):
            if not _denies_insecure_transport(statement):
                continue
            covered = {getatt_target(resource, "Arn") for resource in as_list(statement.get("Resource"))}
            tls_only |= {queue for queue in attached & covered if queue}
        if not attached:
            problems.append(f"{policy_id}: attached to no queue")
    for queue_id, props in queues(t).items():
        if props.get("SqsManagedSseEnabled") is not True and not props.get("KmsMasterKeyId"):
            problems.append(f"{queue_id}: not encrypted (SqsManagedSseEnabled or KmsMasterKeyId)")
        if queue_id not in tls_only:
            problems.append(f"{queue_id}: no queue policy denying aws:SecureTransport=false")
    return problems


def wildcard_problems(t: Template) -> list[str]:
    """No Allow statement grants a wildcard action or a "*" resource; no role gets AWS managed
    policies (which grant "*"); no function falls back to a SAM-generated role."""
    problems: list[str] = []
    for where, statement in policy_statements(t):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where}: Allow with NotAction/NotResource")
        if statement.get("Principal") in ("*", {"AWS": "*"}):
            problems.append(f"{where}: Allow to every principal")
        actions = as_list(statement.get("Action", []))
        for action in actions:
            if not isinstance(action, str) or "*" in action:
                problems.append(f"{where}: wildcard or computed action {show(action)}")
        for resource in as_list(statement.get("Resource", [])):
            text = literal_text(resource)
            if text is None or "*" not in text:
                continue
            if text == "*" and actions and set(actions) <= XRAY_WRITE_ACTIONS:
                continue  # X-Ray has no resource-level permissions
            problems.append(f"{where}: wildcard resource {show(resource)} for {actions}")
    for role_id, role in resources_of_type(t, "AWS::IAM::Role").items():
        for arn in role.get("Properties", {}).get("ManagedPolicyArns", []):
            if show(arn) not in ALLOWED_MANAGED_POLICIES.get(role_id, set()):
                problems.append(
                    f"{role_id}: AWS managed policy {show(arn)} (grants more than this stack needs)"
                )
    for function_id in resources_of_type(t, "AWS::Serverless::Function"):
        if "Role" not in properties(t, function_id):
            problems.append(
                f"{function_id}: SAM-generated role; it attaches AWSLambdaBasicExecutionRole and, for SQS "
                "events, AWSLambdaSQSQueueExecutionRole, both with Resource '*'"
            )
    return problems


def api_routes(t: Template) -> set[tuple[str, str, str]]:
    return {
        (function_id, str(props.get("Method", "")).upper(), str(props.get("Path", "")))
        for function_id, _, props in function_events(t, "Api")
    }


def route_set_problems(t: Template) -> list[str]:
    routes = api_routes(t)
    problems = [f"route missing: {route}" for route in sorted(EXPECTED_ROUTES - routes)]
    problems += [f"unexpected route: {route}" for route in sorted(routes - EXPECTED_ROUTES)]
    return problems


def _route_auth_problems_resolved(t: Template, mode: str) -> list[str]:
    problems: list[str] = []
    apis = resources_of_type(t, "AWS::Serverless::Api")
    for function_id, name, props in function_events(t, "Api"):
        where = f"[ApiAuth={mode}] {function_id}.Events.{name}"
        api_id = ref_target(props.get("RestApiId"))
        if api_id not in apis:
            problems.append(f"{where}: not attached to an AWS::Serverless::Api of this template")
            continue
        event_auth = props.get("Auth", {})
        if event_auth.get("Authorizer") == "NONE" or event_auth.get("ApiKeyRequired") is False:
            problems.append(f"{where}: switches authentication off ({event_auth})")
        api_auth = apis[api_id].get("Properties", {}).get("Auth", {})
        if api_auth.get("ApiKeyRequired") is not True and not api_auth.get("DefaultAuthorizer"):
            problems.append(f"{where}: {api_id} requires neither an API key nor an authorizer")
    return problems


def route_auth_problems(t: Template) -> list[str]:
    """Every route requires authentication, whichever ApiAuth value is deployed."""
    problems: list[str] = []
    for mode in t["Parameters"]["ApiAuth"]["AllowedValues"]:
        resolved = language_extensions(t, parameter_values(t, {"ApiAuth": mode}))
        problems += _route_auth_problems_resolved(resolved, mode)
    return problems


def architecture_problems(t: Template) -> list[str]:
    """The layer is built for the architecture and Python the functions run on."""
    problems: list[str] = []
    layer = t["Resources"]["CioRelayLayer"]
    metadata = layer.get("Metadata", {})
    build_arch = metadata.get("BuildArchitecture")
    runtime = t.get("Globals", {}).get("Function", {}).get("Runtime")
    if build_arch not in ("x86_64", "arm64"):
        problems.append(f"CioRelayLayer: Metadata.BuildArchitecture is {build_arch!r}")
    if metadata.get("BuildMethod") != runtime:
        problems.append(f"CioRelayLayer: BuildMethod {metadata.get('BuildMethod')!r} != runtime {runtime!r}")
    if layer.get("Properties", {}).get("CompatibleArchitectures") != [build_arch]:
        problems.append("CioRelayLayer: CompatibleArchitectures differs from BuildArchitecture")
    if runtime not in layer.get("Properties", {}).get("CompatibleRuntimes", []):
        problems.append(f"CioRelayLayer: CompatibleRuntimes lacks {runtime}")
    for function_id in resources_of_type(t, "AWS::Serverless::Function"):
        architectures = function_setting(t, function_id, "Architectures", ["x86_64"])
        if architectures != [build_arch]:
            problems.append(
                f"{function_id}: Architectures {architectures} but the layer is built for {build_arch}"
            )
        if function_setting(t, function_id, "Runtime") != runtime:
            problems.append(f"{function_id}: runtime differs from Globals")
        if {"Ref": "CioRelayLayer"} not in function_setting(t, function_id, "Layers", []):
            problems.append(f"{function_id}: does not use CioRelayLayer")
    return problems


# --------------------------------------------------------------------------- checks on the transform

SCENARIOS: dict[str, dict[str, str]] = {
    "defaults": {},
    "iam-auth": {"ApiAuth": "AWS_IAM"},
    "custom-domain": {
        "CustomDomainName": "relay.example.com",
        "CustomDomainCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0f6a6b8e-1234",
        "CustomDomainHostedZoneId": "Z0123456789ABCDEFGHIJ",
    },
    "everything-on": {
        "Tracing": "Active",
        "CustomerIoSecretKmsKeyArn": EXAMPLE_KMS_KEY_ARN,
        "AlarmEmail": "ops@example.com",
        "CreateApiGatewayLoggingRole": "true",
    },
}


def expected_permissions(function_id: str, params: dict[str, str]) -> set[tuple[str, str]]:
    """(action, resource) pairs a function role must grant: no more, no less."""
    queue = QUEUE_OF_FUNCTION[function_id]
    dlq = SOURCE_TO_DLQ[queue]
    pairs = {
        (action, f"{function_id}LogGroup.Arn") for action in ("logs:CreateLogStream", "logs:PutLogEvents")
    }
    pairs |= {
        (action, f"{queue}.Arn")
        for action in (
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes",
        )
    }
    pairs |= {("sqs:SendMessage", f"{queue}.Arn"), ("sqs:SendMessage", f"{dlq}.Arn")}
    pairs.add(("secretsmanager:GetSecretValue", "Ref:CustomerIoSecretArn"))
    if function_id == "EmailFunction":
        pairs |= {
            (action, "IdempotencyTable.Arn")
            for action in (
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
            )
        }
    if params.get("CustomerIoSecretKmsKeyArn"):
        pairs.add(("kms:Decrypt", "Ref:CustomerIoSecretKmsKeyArn"))
    if params.get("Tracing") == "Active":
        pairs |= {(action, "*") for action in XRAY_WRITE_ACTIONS}
    return pairs


def granted_permissions(transformed: Template, role_id: str) -> set[tuple[str, str]]:
    role = transformed["Resources"][role_id]["Properties"]
    pairs: set[tuple[str, str]] = set()
    for policy in role.get("Policies", []):
        for statement in _flatten_statements(policy["PolicyDocument"].get("Statement", [])):
            if statement.get("Effect") != "Allow":
                continue
            for action in as_list(statement.get("Action", [])):
                for resource in as_list(statement.get("Resource", [])):
                    pairs.add((show(action), show(resource)))
    return pairs


def iam_transform_problems(transformed: Template, params: dict[str, str]) -> list[str]:
    """After the SAM transform: exactly the expected roles, each with exactly the expected grants."""
    problems: list[str] = []
    present = present_resources(transformed, params)
    roles = {lid for lid, r in present.items() if r["Type"] == "AWS::IAM::Role"}
    expected_roles = {f"{function_id}Role" for function_id in FUNCTIONS}
    if params.get("ApiAuth") == "API_KEY":
        expected_roles.add("AuthorizerFunctionRole")
        problems += authorizer_role_problems(transformed, params)
    if params.get("CreateApiGatewayLoggingRole") == "true":
        expected_roles.add("ApiGatewayCloudWatchRole")
    if roles != expected_roles:
        problems.append(f"roles {sorted(roles)}, expected {sorted(expected_roles)}")
    others = sorted(
        lid for lid, r in present.items() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    )
    if others:
        problems.append(f"unexpected IAM policies {others}")
    for function_id in FUNCTIONS:
        role_id = f"{function_id}Role"
        if role_id not in present:
            continue
        function = present[function_id]["Properties"]
        if getatt_target(function.get("Role"), "Arn") != role_id:
            problems.append(f"{function_id}: runs as {function.get('Role')!r}, expected {role_id}")
        if present[role_id]["Properties"].get("ManagedPolicyArns"):
            problems.append(
                f"{role_id}: managed policies {present[role_id]['Properties']['ManagedPolicyArns']}"
            )
        granted = granted_permissions(transformed, role_id)
        wanted = expected_permissions(function_id, params)
        if granted - wanted:
            problems.append(f"{role_id}: grants more than expected: {sorted(granted - wanted)}")
        if wanted - granted:
            problems.append(f"{role_id}: lacks {sorted(wanted - granted)}")
    return problems


def authorizer_role_problems(transformed: Template, params: dict[str, str]) -> list[str]:
    """The authorizer writes its own logs (and traces when tracing is on), nothing else."""
    role = transformed["Resources"]["AuthorizerFunctionRole"]["Properties"]
    wanted = {
        (action, "AuthorizerFunctionLogGroup.Arn") for action in ("logs:CreateLogStream", "logs:PutLogEvents")
    }
    if params.get("Tracing") == "Active":
        wanted |= {(action, "*") for action in XRAY_WRITE_ACTIONS}
    granted = granted_permissions(transformed, "AuthorizerFunctionRole")
    problems = [f"AuthorizerFunctionRole: grants {sorted(granted)}, expected {sorted(wanted)}"] * (
        granted != wanted
    )
    if role.get("ManagedPolicyArns"):
        problems.append(f"AuthorizerFunctionRole: managed policies {role['ManagedPolicyArns']}")
    return problems


def esm_problems(transformed: Template) -> list[str]:
    """The generated event source mappings: one per function, reporting batch item failures."""
    problems: list[str] = []
    mappings = resources_of_type(transformed, "AWS::Lambda::EventSourceMapping")
    by_function = {
        ref_target(m["Properties"].get("FunctionName")): m["Properties"] for m in mappings.values()
    }
    if set(by_function) != set(FUNCTIONS) or len(mappings) != len(FUNCTIONS):
        problems.append(f"event source mappings for {sorted(map(str, by_function))}, expected {FUNCTIONS}")
    for function_id, props in by_function.items():
        prefix = "Events" if function_id == "EventsFunction" else "Email"
        expected = {
            "EventSourceArn": {"Fn::GetAtt": [QUEUE_OF_FUNCTION.get(str(function_id)), "Arn"]},
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BatchSize": {"Ref": f"{prefix}BatchSize"},
            "MaximumBatchingWindowInSeconds": {"Ref": f"{prefix}BatchingWindowSeconds"},
            "ScalingConfig": {"MaximumConcurrency": {"Ref": f"{prefix}MaximumConcurrency"}},
        }
        for key, value in expected.items():
            if props.get(key) != value:
                problems.append(
                    f"{function_id} event source mapping: {key} is {props.get(key)!r}, expected {value!r}"
                )
    return problems


def _operations(body: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in body.get("paths", {}).items():
        for method, operation in methods.items():
            if method.lower() != "options" and isinstance(operation, dict):
                yield method.upper(), path, operation


def api_transform_problems(transformed: Template, params: dict[str, str]) -> list[str]:
    """The generated REST API: every route authenticates the way ApiAuth says; keys only for API_KEY."""
    problems: list[str] = []
    present = present_resources(transformed, params)
    body = present["RelayApi"]["Properties"]["Body"]
    # In API_KEY mode the authorizer finds the key and API Gateway still requires (and meters) it.
    wanted: list[dict[str, list[str]]] = (
        [{"ApiKeyAuthorizer": []}, {"api_key": []}] if params["ApiAuth"] == "API_KEY" else [{"AWS_IAM": []}]
    )
    routes = set()
    for method, path, operation in _operations(body):
        routes.add((method, path))
        if operation.get("security") != wanted:
            problems.append(f"{method} {path}: security {operation.get('security')}, expected {wanted}")
    expected_routes = {(method, path) for _, method, path in EXPECTED_ROUTES}
    if routes != expected_routes:
        problems.append(f"routes {sorted(routes)} != {sorted(expected_routes)}")
    keys = [lid for lid, r in present.items() if r["Type"] == "AWS::ApiGateway::ApiKey"]
    plans = [lid for lid, r in present.items() if r["Type"] == "AWS::ApiGateway::UsagePlan"]
    if params["ApiAuth"] == "API_KEY":
        if keys != ["RelayApiApiKey"] or len(plans) != 1:
            problems.append(f"API_KEY mode needs one key RelayApiApiKey and one usage plan: {keys}, {plans}")
        else:
            # SAM resolves parameter Refs inside Auth while transforming: the values land literally.
            throttle = present[plans[0]]["Properties"].get("Throttle", {})
            wanted_throttle = {
                "BurstLimit": params["ApiThrottleBurstLimit"],
                "RateLimit": params["ApiThrottleRateLimit"],
            }
            if {key: str(value) for key, value in throttle.items()} != wanted_throttle:
                problems.append(f"usage plan throttle is {throttle}, expected {wanted_throttle}")
    elif keys or plans:
        problems.append(f"AWS_IAM mode should create no API key or usage plan: {keys}, {plans}")
    stages = [r for r in present.values() if r["Type"] == "AWS::ApiGateway::Stage"]
    if len(stages) != 1 or "AccessLogSetting" not in stages[0]["Properties"]:
        problems.append(f"expected one stage with access logs, got {len(stages)}")
    return problems


_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def dangling_references(transformed: Template, params: dict[str, str]) -> list[str]:
    """Refs, GetAtts and ${} in Subs that name nothing (cfn-lint does not see SAM-generated ids)."""
    present = present_resources(transformed, params)
    known = set(present) | set(transformed.get("Parameters", {})) | PSEUDO_PARAMETERS
    truth = condition_values(transformed, params)
    problems: list[str] = []

    def walk(node: Any, where: str, local: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where, local)
            return
        if not isinstance(node, dict):
            return
        if list(node) == ["Ref"] and isinstance(node["Ref"], str) and node["Ref"] not in known:
            problems.append(f"{where}: Ref {node['Ref']}")
        if list(node) == ["Fn::GetAtt"] and str(as_list(node["Fn::GetAtt"])[0]).split(".")[0] not in present:
            problems.append(f"{where}: GetAtt {node['Fn::GetAtt']}")
        if list(node) == ["Fn::Sub"]:
            text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            for name in _SUB_VARIABLE.findall(text):
                if name.split(".")[0] not in known | set(variables) | local:
                    problems.append(f"{where}: Sub variable {name}")
            walk(variables, where, local)
            return
        for value in node.values():
            walk(value, where, local)

    for logical_id, resource in present.items():
        walk(resource, logical_id, frozenset())
    for name, output in transformed.get("Outputs", {}).items():
        if "Condition" not in output or truth[output["Condition"]]:
            walk(output, f"Outputs.{name}", frozenset())
    return problems


@cache
def _transformed_json(scenario: str) -> str:
    t = load_template()
    return json.dumps(sam_transform(t, parameter_values(t, SCENARIOS[scenario])))


def transformed_template(scenario: str) -> Template:
    loaded: Template = json.loads(_transformed_json(scenario))
    return loaded


# --------------------------------------------------------------------------- tests: linters


def _cfn_lint() -> list[str]:
    script = Path(sys.executable).with_name("cfn-lint")
    if script.exists():
        return [str(script)]
    found = shutil.which("cfn-lint")
    assert found, "cfn-lint is a dev requirement (requirements-dev.txt) and must be installed"
    return [found]


@pytest.fixture(scope="module")
def cfn_lint_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """cfn-lint's findings (parseable lines) for the template and for a copy with a type error it does
    detect, from one cfn-lint run: starting cfn-lint costs more than linting a template."""
    broken = tmp_path_factory.mktemp("cfn-lint") / "template.yaml"
    broken.write_text(TEMPLATE_PATH.read_text().replace("MemorySize: 512", "MemorySize: lots"))
    result = subprocess.run(
        [*_cfn_lint(), "--format", "parseable", str(TEMPLATE_PATH), str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 2, 4, 6, 8, 10, 12, 14), result.stdout + result.stderr  # lint results
    findings: dict[str, list[str]] = {"template": [], "broken": []}
    for line in result.stdout.splitlines():
        name = "broken" if line.startswith(str(broken)) else "template"
        findings[name].append(line)
    return findings


def test_cfn_lint_is_clean(cfn_lint_findings: dict[str, list[str]]) -> None:
    # Given the template
    # When cfn-lint (the linter `sam validate --lint` runs) checks it
    # Then it reports nothing, not even warnings
    assert cfn_lint_findings["template"] == []


def test_cfn_lint_is_really_run(cfn_lint_findings: dict[str, list[str]]) -> None:
    # Given a copy of the template with a type error cfn-lint does detect
    # When cfn-lint checks it (in the same run)
    # Then it fails: the clean result above is not a no-op
    assert any(":E3012:" in line for line in cfn_lint_findings["broken"]), cfn_lint_findings["broken"]


def test_sam_validate_lint() -> None:
    # Given the SAM CLI, which is optional (it needs its own venv; see docs/deploying.md "Checks")
    sam = shutil.which("sam")
    if sam is None:
        pytest.skip("sam CLI not on PATH (optional; `make build` installs it in .venv-sam)")
    # When it validates the template offline
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        [sam, "validate", "--lint", "--template", str(TEMPLATE_PATH)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    # Then it is valid
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- tests: the SAM source


@pytest.mark.parametrize(
    "check",
    [
        sqs_event_problems,
        visibility_problems,
        app_api_throttle_problems,
        redrive_problems,
        encryption_problems,
        wildcard_problems,
        route_set_problems,
        route_auth_problems,
        architecture_problems,
    ],
    ids=lambda check: check.__name__,
)
def test_template_passes_check(template: Template, check: Callable[[Template], list[str]]) -> None:
    # Given template.yaml
    # When the check runs on it
    problems = check(template)
    # Then it finds nothing
    assert problems == []


def _set_event(function_id: str, event: str, **values: Any) -> Callable[[Template], None]:
    def mutate(t: Template) -> None:
        properties(t, function_id)["Events"][event]["Properties"].update(values)

    return mutate


def _delete(path: list[str]) -> Callable[[Template], None]:
    def mutate(t: Template) -> None:
        node: Any = t
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(path: list[str], value: Any) -> Callable[[Template], None]:
    def mutate(t: Template) -> None:
        node: Any = t
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _add_statement(role_id: str, statement: dict[str, Any]) -> Callable[[Template], None]:
    def mutate(t: Template) -> None:
        properties(t, role_id)["Policies"][0]["PolicyDocument"]["Statement"].append(statement)

    return mutate


def _add_route(t: Template) -> None:
    properties(t, "EventsFunction")["Events"]["Debug"] = {
        "Type": "Api",
        "Properties": {"RestApiId": {"Ref": "RelayApi"}, "Path": "/v1/debug", "Method": "get"},
    }


BROKEN_TEMPLATES: list[Any] = [
    pytest.param(
        _set_event("EventsFunction", "EventsQueueRecords", FunctionResponseTypes=["ReportBogus"]),
        sqs_event_problems,
        id="ReportBogus",
    ),
    pytest.param(
        _delete(
            [
                "Resources",
                "EmailFunction",
                "Properties",
                "Events",
                "EmailQueueRecords",
                "Properties",
                "FunctionResponseTypes",
            ]
        ),
        sqs_event_problems,
        id="no-FunctionResponseTypes",
    ),
    pytest.param(
        _set_event("EmailFunction", "EmailQueueRecords", BatchSize=50, MaximumBatchingWindowInSeconds=0),
        sqs_event_problems,
        id="batch-over-10-without-window",
    ),
    pytest.param(
        _delete(
            [
                "Resources",
                "EventsFunction",
                "Properties",
                "Events",
                "EventsQueueRecords",
                "Properties",
                "ScalingConfig",
            ]
        ),
        sqs_event_problems,
        id="no-maximum-concurrency",
    ),
    pytest.param(
        _set(["Globals", "Function", "Timeout"], 60), visibility_problems, id="timeout-over-visibility/6"
    ),
    pytest.param(
        _set(["Resources", "EmailQueue", "Properties", "VisibilityTimeout"], 30),
        visibility_problems,
        id="visibility-equals-timeout",
    ),
    pytest.param(
        _set(["Resources", "EventsQueue", "Properties", "VisibilityTimeout"], 180),
        visibility_problems,
        id="visibility-ignores-the-batching-window",
    ),
    pytest.param(
        _set(["Mappings", "VisibilityForWindow", "300", "Seconds"], 300),
        visibility_problems,
        id="visibility-short-for-the-longest-window",
    ),
    pytest.param(
        _set(
            ["Resources", "RelayApi", "Properties", "MethodSettings"],
            [{"ResourcePath": "/*", "HttpMethod": "*"}],
        ),
        app_api_throttle_problems,
        id="app-api-routes-not-throttled",
    ),
    pytest.param(
        _delete(["Resources", "EmailQueue", "Properties", "RedrivePolicy"]), redrive_problems, id="no-redrive"
    ),
    pytest.param(
        _set(
            ["Resources", "EmailQueue", "Properties", "RedrivePolicy", "deadLetterTargetArn"],
            {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]},
        ),
        redrive_problems,
        id="shared-dlq",
    ),
    pytest.param(
        _set(["Parameters", "MaxReceiveCount", "Default"], 1), redrive_problems, id="maxReceiveCount-1"
    ),
    pytest.param(
        _set(["Resources", "EventsDeadLetterQueue", "Properties", "MessageRetentionPeriod"], 86400),
        redrive_problems,
        id="dlq-retention-shorter",
    ),
    pytest.param(
        _set(["Resources", "EventsDeadLetterQueue", "Properties", "SqsManagedSseEnabled"], False),
        encryption_problems,
        id="unencrypted-queue",
    ),
    pytest.param(
        _delete(["Resources", "EmailDeadLetterQueuePolicy"]), encryption_problems, id="no-tls-policy"
    ),
    pytest.param(
        _add_statement(
            "EventsFunctionRole", {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}
        ),
        wildcard_problems,
        id="star-resource",
    ),
    pytest.param(
        _add_statement(
            "EmailFunctionRole",
            {
                "Effect": "Allow",
                "Action": "dynamodb:*",
                "Resource": {"Fn::GetAtt": ["IdempotencyTable", "Arn"]},
            },
        ),
        wildcard_problems,
        id="star-action",
    ),
    pytest.param(
        _add_statement(
            "EmailFunctionRole",
            {
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": {"Fn::Sub": "arn:aws:sqs:*:${AWS::AccountId}:*"},
            },
        ),
        wildcard_problems,
        id="star-in-sub-resource",
    ),
    pytest.param(
        _set(
            ["Resources", "EventsFunctionRole", "Properties", "ManagedPolicyArns"],
            ["arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"],
        ),
        wildcard_problems,
        id="managed-policy",
    ),
    pytest.param(
        _delete(["Resources", "EmailFunction", "Properties", "Role"]),
        wildcard_problems,
        id="sam-generated-role",
    ),
    pytest.param(_add_route, route_set_problems, id="unexpected-route"),
    pytest.param(
        _delete(["Resources", "EventsFunction", "Properties", "Events", "ListSegments"]),
        route_set_problems,
        id="missing-route",
    ),
    pytest.param(
        _set_event("EventsFunction", "Track", Auth={"ApiKeyRequired": False}),
        route_auth_problems,
        id="route-without-api-key",
    ),
    pytest.param(
        _set_event("EmailFunction", "SendEmail", Auth={"Authorizer": "NONE"}),
        route_auth_problems,
        id="route-without-authorizer",
    ),
    pytest.param(
        _delete(["Resources", "RelayApi", "Properties", "Auth"]), route_auth_problems, id="api-without-auth"
    ),
    pytest.param(
        _set(["Resources", "CioRelayLayer", "Metadata", "BuildArchitecture"], "x86_64"),
        architecture_problems,
        id="layer-built-for-x86_64",
    ),
    pytest.param(
        _set(["Resources", "EmailFunction", "Properties", "Architectures"], ["x86_64"]),
        architecture_problems,
        id="function-overrides-architecture",
    ),
]


@pytest.mark.parametrize(("mutate", "check"), BROKEN_TEMPLATES)
def test_checks_catch_broken_templates(
    template: Template, mutate: Callable[[Template], None], check: Callable[[Template], list[str]]
) -> None:
    # Given template.yaml broken in one specific way
    mutate(template)
    # When the check responsible for that property runs
    problems = check(template)
    # Then it reports the breakage
    assert problems, f"{check.__name__} did not notice the broken template"


def test_environment_variables(template: Template) -> None:
    # Given the variables the layer reads (docs/design.md "Configuration")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    # Then both functions get all of them through Globals, and each names its own service
    assert set(variables) >= EXPECTED_ENVIRONMENT
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "CioRelay"
    assert variables["CUSTOMERIO_SECRET_ID"] == {"Ref": "CustomerIoSecretArn"}
    assert variables["TRACING_ENABLED"] == {"Fn::If": ["TracingEnabled", "true", "false"]}
    for function_id, service in SERVICE_NAMES.items():
        assert properties(template, function_id)["Environment"]["Variables"] == {
            "POWERTOOLS_SERVICE_NAME": service
        }
    # And one Customer.io request (connect + read) leaves most of the function timeout for the rest
    request = float(variables["CUSTOMERIO_CONNECT_TIMEOUT"]) + float(variables["CUSTOMERIO_READ_TIMEOUT"])
    assert request <= int(template["Globals"]["Function"]["Timeout"]) / 2
    # And AWS_ENDPOINT_URL is not declared: it is for local emulators only
    assert "AWS_ENDPOINT_URL" not in variables


def test_function_wiring(template: Template) -> None:
    # Given the two functions
    for function_id, code in (("EventsFunction", "functions/events/"), ("EmailFunction", "functions/email/")):
        props = properties(template, function_id)
        # Then code, handler, runtime, memory and timeout are as the layer and the queues expect
        assert props["CodeUri"] == code
        assert props["Handler"] == "app.lambda_handler"
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["MemorySize"] == 512
    assert function_globals["Timeout"] == 30
    assert function_globals["Tracing"] == {"Fn::If": ["TracingEnabled", "Active", "PassThrough"]}
    assert template["Parameters"]["Tracing"]["Default"] == "Disabled"
    assert properties(template, "CioRelayLayer")["ContentUri"] == "layers/cio_relay/"


def test_log_groups_have_retention(template: Template) -> None:
    # Given each function's log group
    for function_id in FUNCTIONS:
        props = properties(template, function_id)
        log_group_id = ref_target(props["LoggingConfig"]["LogGroup"])
        assert log_group_id is not None
        log_group = properties(template, log_group_id)
        # Then it is /aws/lambda/<function name> with the retention parameter
        assert literal_text(log_group["LogGroupName"]) == "/aws/lambda/" + str(
            literal_text(props["FunctionName"])
        )
        assert log_group["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
    # And the API's access logs go to a log group with the same retention
    api = properties(template, "RelayApi")
    assert getatt_target(api["AccessLogSetting"]["DestinationArn"], "Arn") == "ApiAccessLogGroup"
    assert properties(template, "ApiAccessLogGroup")["RetentionInDays"] == {"Ref": "LogRetentionInDays"}


def test_idempotency_table(template: Template) -> None:
    # Given the idempotency table
    table = properties(template, "IdempotencyTable")
    # Then it has Powertools' default key and TTL attribute, on demand, with PITR and encryption
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}


def test_alarms_cover_every_queue_and_function(template: Template) -> None:
    # Given the CloudWatch alarms
    alarms = [a["Properties"] for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()]

    def watched(metric: str, dimension: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for alarm in alarms:
            if alarm["MetricName"] == metric:
                value = alarm["Dimensions"][0]["Value"]
                target = (
                    ref_target(value) if dimension == "FunctionName" else getatt_target(value, "QueueName")
                )
                found[str(target)] = alarm
        return found

    # Then each DLQ alarms as soon as it holds a message
    dlq_alarms = watched("ApproximateNumberOfMessagesVisible", "QueueName")
    assert set(dlq_alarms) == set(SOURCE_TO_DLQ.values())
    for alarm in dlq_alarms.values():
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    # And each source queue alarms when its oldest message is older than the threshold parameter
    age_alarms = watched("ApproximateAgeOfOldestMessage", "QueueName")
    assert set(age_alarms) == set(SOURCE_TO_DLQ)
    assert all(a["Threshold"] == {"Ref": "QueueAgeAlarmThresholdSeconds"} for a in age_alarms.values())
    # And each function alarms on errors
    assert set(watched("Errors", "FunctionName")) == set(FUNCTIONS)
    # And every alarm notifies the optional SNS topic
    for alarm in alarms:
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]
        }
    assert template["Resources"]["AlarmTopic"]["Condition"] == "HasAlarmEmail"
    assert template["Resources"]["AlarmEmailSubscription"]["Condition"] == "HasAlarmEmail"


def test_outputs(template: Template) -> None:
    # Given the stack outputs
    outputs = template["Outputs"]
    # Then the API, key, queues, DLQs, table and secret are all there; the key only with API keys
    assert set(outputs) == EXPECTED_OUTPUTS
    assert outputs["ApiKeyId"]["Condition"] == "UseApiKeyAuth"


def test_gateway_errors_have_code_and_message(template: Template) -> None:
    # Given API Gateway's own error responses (missing key, throttled, ...)
    responses = properties(template, "RelayApi")["GatewayResponses"]
    for response_type in ("DEFAULT_4XX", "DEFAULT_5XX"):
        body = responses[response_type]["ResponseTemplates"]["application/json"]
        # When API Gateway fills in the $context variables
        rendered = body.replace("$context.error.messageString", '"Forbidden"')
        rendered = re.sub(r"\$context\.[a-zA-Z.]+", "x", rendered)
        # Then the answer is JSON with the contract's code and message
        assert {"code", "message"} <= set(json.loads(rendered))


def test_retry_horizon_fits_retention_and_idempotency(template: Template) -> None:
    # Given the default retry policy: delay min(cap, base * 2^(n-1)) after receive n
    params = parameter_values(template)
    base, cap = int(params["RetryBaseSeconds"]), int(params["RetryCapSeconds"])
    receives = int(params["MaxReceiveCount"])
    timeout = int(template["Globals"]["Function"]["Timeout"])
    # When a message fails every attempt (jitter can at most double a delay)
    horizon = sum(2 * min(cap, base * 2 ** (n - 1)) + timeout for n in range(1, receives))
    # Then it reaches its DLQ well within retention, and its idempotency key outlives the retries
    assert horizon < SQS_MAX_RETENTION / 2
    assert horizon < int(params["IdempotencyTtlSeconds"])
    assert cap <= 43_200  # SQS's visibility timeout limit


# --------------------------------------------------------------------------- tests: the SAM transform


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_transform_iam_is_least_privilege(scenario: str) -> None:
    # Given the template transformed by aws-sam-translator for these parameter values
    t = load_template()
    params = parameter_values(t, SCENARIOS[scenario])
    transformed = transformed_template(scenario)
    # Then only the two function roles exist (plus the API Gateway logging role on request),
    # each granting exactly the expected actions on the expected resources
    assert iam_transform_problems(transformed, params) == []
    # And the generated template has no wildcard anywhere
    assert wildcard_problems(transformed) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_transform_event_source_mappings(scenario: str) -> None:
    # Given the transformed template
    transformed = transformed_template(scenario)
    # Then each function has one SQS mapping with partial batch failures, batch size and concurrency cap
    assert esm_problems(transformed) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_transform_api_authenticates_every_route(scenario: str) -> None:
    # Given the transformed template
    t = load_template()
    params = parameter_values(t, SCENARIOS[scenario])
    # Then every route requires what ApiAuth says, and keys exist only in API_KEY mode
    assert api_transform_problems(transformed_template(scenario), params) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_transform_has_no_dangling_references(scenario: str) -> None:
    # Given the transformed template (where SAM-generated ids such as RelayApiApiKey exist)
    t = load_template()
    params = parameter_values(t, SCENARIOS[scenario])
    # Then every Ref, GetAtt and Sub variable names a parameter or a resource that is created
    assert dangling_references(transformed_template(scenario), params) == []


def test_transformed_checks_catch_report_bogus(template: Template) -> None:
    # Given a template whose events SQS trigger reports something Lambda does not know
    _set_event("EventsFunction", "EventsQueueRecords", FunctionResponseTypes=["ReportBogus"])(template)
    # When it is transformed
    transformed = sam_transform(template, parameter_values(template))
    # Then the event source mapping check fails
    assert any("FunctionResponseTypes" in problem for problem in esm_problems(transformed))


def test_transformed_checks_catch_extra_grant(template: Template) -> None:
    # Given a template whose events role may also purge its queue, and whose email function falls
    # back to the role SAM generates
    _add_statement(
        "EventsFunctionRole",
        {"Effect": "Allow", "Action": "sqs:PurgeQueue", "Resource": {"Fn::GetAtt": ["EventsQueue", "Arn"]}},
    )(template)
    _delete(["Resources", "EmailFunction", "Properties", "Role"])(template)
    _delete(["Resources", "EmailFunctionRole"])(template)
    params = parameter_values(template)
    # When it is transformed
    transformed = sam_transform(template, params)
    # Then the IAM check reports the extra grant and the SAM-generated role with its managed policies
    problems = iam_transform_problems(transformed, params)
    assert any("sqs:PurgeQueue" in problem for problem in problems)
    assert any("EmailFunctionRole" in problem for problem in problems)


def test_transformed_checks_catch_dangling_reference(template: Template) -> None:
    # Given an output that names a resource SAM does not generate
    template["Outputs"]["ApiKeyId"]["Value"] = {"Ref": "RelayApiKey"}
    params = parameter_values(template)
    # When it is transformed
    transformed = sam_transform(template, params)
    # Then the reference check reports it
    assert dangling_references(transformed, params) == ["Outputs.ApiKeyId: Ref RelayApiKey"]


def test_transformed_checks_catch_unauthenticated_route(template: Template) -> None:
    # Given a route that opts out of the API key
    _set_event("EventsFunction", "ListSegments", Auth={"ApiKeyRequired": False})(template)
    params = parameter_values(template)
    # When it is transformed
    transformed = sam_transform(template, params)
    # Then the API check reports that route
    problems = api_transform_problems(transformed, params)
    assert len(problems) == 1
    assert "GET /v1/segments" in problems[0]


# --------------------------------------------------------------------------- tests: samconfig.toml, env.json


def test_samconfig() -> None:
    # Given samconfig.toml
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    default = config["default"]
    # Then it is version 0.1 with cached parallel builds, linted validation and a named stack
    assert config["version"] == 0.1
    assert default["build"]["parameters"]["cached"] is True
    assert default["build"]["parameters"]["parallel"] is True
    assert default["validate"]["parameters"]["lint"] is True
    deploy = default["deploy"]["parameters"]
    assert deploy["stack_name"] == "cio-relay"
    assert deploy["resolve_s3"] is True
    assert "CAPABILITY_IAM" in str(deploy["capabilities"])
    assert deploy["confirm_changeset"] is True
    # And its parameter overrides name real template parameters
    template_parameters = set(load_template()["Parameters"])
    for override in str(deploy.get("parameter_overrides", "")).split():
        assert override.split("=", 1)[0] in template_parameters, override
    # And local invocations read env.json
    assert default["local_invoke"]["parameters"]["env_vars"] == "env.json"
    assert default["local_start_api"]["parameters"]["env_vars"] == "env.json"


def test_env_json_only_overrides_declared_variables(template: Template) -> None:
    # Given env.json (sam local ignores variables the template does not declare)
    env = json.loads((ROOT / "env.json").read_text())
    declared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    # Then every variable it sets is declared, globally or by that function
    assert set(env["Parameters"]) <= declared
    for key, variables in env.items():
        if key == "Parameters":
            continue
        assert key in FUNCTIONS
        own = set(properties(template, key).get("Environment", {}).get("Variables", {}))
        assert set(variables) <= declared | own


# --------------------------------------------------------------------------- tests: check_build_arch.py


def _fake_elf(path: Path, machine: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(11) + struct.pack("<H", machine)
    path.write_bytes(header + bytes(44))


def test_build_arch_check_accepts_matching_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a build whose extensions are all aarch64 and cpython-313
    build = tmp_path / "build"
    _fake_elf(
        build / "CioRelayLayer/python/pydantic_core/_pydantic_core.cpython-313-aarch64-linux-gnu.so", 183
    )
    _fake_elf(build / "CioRelayLayer/python/thing.libs/libz-1a2b.so.1.2", 183)
    # When the check runs for arm64
    code = check_build_arch.main(["arm64", "--build-dir", str(build)])
    # Then it passes and says how many it checked
    assert code == 0
    assert "2 shared object(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "machine", "problem"),
    [
        ("_pydantic_core.cpython-313-x86_64-linux-gnu.so", 62, "built for x86_64"),
        ("_pydantic_core.cpython-311-aarch64-linux-gnu.so", 183, "cpython-311"),
        ("_pydantic_core.cpython-313-x86_64-linux-gnu.so", 183, "platform tag x86_64"),
        ("_speedups.so", 0, "not an ELF file"),
    ],
)
def test_build_arch_check_rejects_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, machine: int, problem: str
) -> None:
    # Given a build with one extension for the wrong architecture, Python or OS
    build = tmp_path / "build"
    target = build / "CioRelayLayer/python/pkg" / name
    if machine:
        _fake_elf(target, machine)
    else:
        target.parent.mkdir(parents=True)
        target.write_bytes(b"\xcf\xfa\xed\xfe" + bytes(60))  # a Mach-O header
    # When the check runs for arm64
    code = check_build_arch.main(["arm64", "--build-dir", str(build)])
    # Then it fails and names the file and the problem
    assert code == 1
    err = capsys.readouterr().err
    assert name in err
    assert problem in err


def test_build_arch_check_fails_on_empty_or_missing_build(tmp_path: Path) -> None:
    # Given no build at all, then a build without any native extension
    assert check_build_arch.main(["x86_64", "--build-dir", str(tmp_path / "missing")]) == 1
    (tmp_path / "build/EventsFunction").mkdir(parents=True)
    # Then the check fails unless told that no extension is expected
    assert check_build_arch.main(["x86_64", "--build-dir", str(tmp_path / "build")]) == 1
    assert check_build_arch.main(["x86_64", "--build-dir", str(tmp_path / "build"), "--allow-none"]) == 0


def test_build_arch_check_runs_as_a_script(tmp_path: Path) -> None:
    # Given the script as `make build` calls it, without PYTHONPATH
    _fake_elf(tmp_path / "build/L/python/_x.cpython-313-aarch64-linux-gnu.so", 183)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # When it runs
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/template/check_build_arch.py"), "arm64", "--build-dir", "build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    # Then it checks the build and passes
    assert result.returncode == 0, result.stderr
    assert "all arm64" in result.stdout
