"""template.yaml's API front door: the key authorizer, the usage plan, bodies, errors and the custom domain.

Checked on the SAM transform's output (what CloudFormation deploys), for each ApiAuth value.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest

from tests.template.test_template import (
    EXPECTED_ROUTES,
    Template,
    load_template,
    parameter_values,
    present_resources,
    sam_transform,
)

CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/0f6a6b8e-1234-4cde-9abc-0123456789ab"
DOMAIN = {"CustomDomainName": "relay.example.com", "CustomDomainCertificateArn": CERTIFICATE}


@cache
def _transformed(overrides: str) -> str:
    t = load_template()
    return json.dumps(sam_transform(t, parameter_values(t, json.loads(overrides))))


def deployed(**overrides: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(resources CloudFormation creates, parameter values) after the SAM transform."""
    key = json.dumps(overrides, sort_keys=True)
    transformed: Template = json.loads(_transformed(key))
    params = parameter_values(load_template(), overrides)
    return present_resources(transformed, params), params


def of_type(resources: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in resources.items() if r["Type"] == kind}


def api_body(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = resources["RelayApi"]["Properties"]["Body"]
    return body


def operations(body: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in body["paths"].items()
        for method, operation in methods.items()
        if isinstance(operation, dict)
    ]


def test_api_key_mode_every_route_uses_the_authorizer_and_requires_the_key() -> None:
    # GIVEN the default deployment (ApiAuth=API_KEY)
    resources, _ = deployed()
    body = api_body(resources)

    # THEN every route runs the key authorizer AND requires an API key (metered by the usage plan)
    routes = operations(body)
    assert {(method, path) for method, path, _ in routes} == {(m, p) for _, m, p in EXPECTED_ROUTES}
    for method, path, operation in routes:
        assert operation["security"] == [{"ApiKeyAuthorizer": []}, {"api_key": []}], (method, path)
    # AND API Gateway takes that key from the authorizer, not from the x-api-key header
    assert resources["RelayApi"]["Properties"]["ApiKeySourceType"] == "AUTHORIZER"


def test_authorizer_is_a_request_authorizer_without_identity_sources_or_cache() -> None:
    # GIVEN the default deployment
    resources, _ = deployed()
    scheme = api_body(resources)["components"]["securitySchemes"]["ApiKeyAuthorizer"]
    authorizer = scheme["x-amazon-apigateway-authorizer"]

    # THEN it is a REQUEST authorizer that sees every header: with an identity source API Gateway
    # would answer 401 itself whenever that one header is absent (x-api-key OR Authorization is sent)
    assert authorizer["type"] == "request"
    assert "identitySource" not in authorizer
    # AND results are never cached (a cache would be keyed on the identity sources alone)
    assert authorizer["authorizerResultTtlInSeconds"] == 0
    arn = authorizer["authorizerUri"]["Fn::Sub"][1]["__FunctionArn__"]
    assert arn == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    # AND API Gateway may invoke it (and only for this API's authorizers)
    permission = resources["RelayApiApiKeyAuthorizerAuthorizerPermission"]["Properties"]
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["FunctionName"] == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    assert permission["SourceArn"]["Fn::Sub"][0].endswith("${__ApiId__}/authorizers/*")


def test_authorizer_function_runs_the_tiny_handler() -> None:
    # GIVEN the default deployment
    resources, _ = deployed()
    function = resources["AuthorizerFunction"]["Properties"]

    # THEN it is functions/authorizer/app.py, small and quick, with its own role and log group
    assert function["Handler"] == "app.lambda_handler"
    assert function["Code"]["S3Key"] == "functions/authorizer.zip"
    assert function["Timeout"] <= 3
    assert function["MemorySize"] == 128
    assert function["Role"] == {"Fn::GetAtt": ["AuthorizerFunctionRole", "Arn"]}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "AuthorizerFunctionLogGroup"}}


def test_usage_plan_still_applies_to_every_key_the_authorizer_returns() -> None:
    # GIVEN the default deployment
    resources, params = deployed()

    # THEN one usage plan covers the API's stage with the stack's throttling
    (plan_id, plan), *others = of_type(resources, "AWS::ApiGateway::UsagePlan").items()
    assert others == []
    assert plan["Properties"]["ApiStages"] == [
        {"ApiId": {"Ref": "RelayApi"}, "Stage": {"Ref": "RelayApiStage"}}
    ]
    assert {k: str(v) for k, v in plan["Properties"]["Throttle"].items()} == {
        "BurstLimit": params["ApiThrottleBurstLimit"],
        "RateLimit": params["ApiThrottleRateLimit"],
    }
    # AND the stack's key is on it (so the key the authorizer hands back is metered and throttled)
    (link,) = of_type(resources, "AWS::ApiGateway::UsagePlanKey").values()
    assert link["Properties"] == {
        "KeyId": {"Ref": "RelayApiApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_id},
    }


def test_iam_mode_is_unchanged() -> None:
    # GIVEN ApiAuth=AWS_IAM
    resources, _ = deployed(ApiAuth="AWS_IAM")
    body = api_body(resources)

    # THEN routes are SigV4-signed only: no authorizer function, no key, no usage plan
    for method, path, operation in operations(body):
        assert operation["security"] == [{"AWS_IAM": []}], (method, path)
    assert "AuthorizerFunction" not in resources
    assert "AuthorizerFunctionRole" not in resources
    assert "ApiKeyAuthorizer" not in body["components"]["securitySchemes"]
    assert resources["RelayApi"]["Properties"]["ApiKeySourceType"] == "HEADER"
    assert of_type(resources, "AWS::ApiGateway::UsagePlan") == {}
    # AND API Gateway's missing-signature answer stays a 403 (it also answers unsigned requests)
    missing = body["x-amazon-apigateway-gateway-responses"]["MISSING_AUTHENTICATION_TOKEN"]
    assert missing["statusCode"] == "403"


def test_every_body_reaches_the_functions_as_bytes() -> None:
    # GIVEN the default deployment
    resources, _ = deployed()

    # THEN every media type is binary: a gzip body arrives base64-encoded and intact, not as text
    assert api_body(resources)["x-amazon-apigateway-binary-media-types"] == ["*/*"]


def render(template: str, **context: str) -> Any:
    """A gateway response template as API Gateway fills it in (plain $context substitution)."""
    values = {"error.messageString": '"Forbidden"', "requestId": "r-1", **context}
    return json.loads(re.sub(r"\$context\.([a-zA-Z.]+)", lambda m: values.get(m.group(1), "x"), template))


def test_gateway_answers_name_what_went_wrong_in_json() -> None:
    # GIVEN API Gateway's own answers in API_KEY mode
    resources, _ = deployed()
    responses = api_body(resources)["x-amazon-apigateway-gateway-responses"]

    # WHEN an unknown path or method is called
    missing = responses["MISSING_AUTHENTICATION_TOKEN"]
    body = render(missing["responseTemplates"]["application/json"], httpMethod="GET", path="/prod/v1/nope")
    # THEN the answer is a 404 naming it, not a 403 that sends people off to debug their key
    assert missing["statusCode"] == "404"
    assert body["code"] == "not_found"
    assert "GET /prod/v1/nope" in body["message"]
    # AND no key (401) and an unknown key (403) say so, with code and message
    unauthorized = render(responses["UNAUTHORIZED"]["responseTemplates"]["application/json"])
    assert unauthorized["code"] == "UNAUTHORIZED"
    assert "Authorization: Basic" in unauthorized["message"]
    assert "Bearer" in unauthorized["message"]
    invalid = render(responses["INVALID_API_KEY"]["responseTemplates"]["application/json"])
    assert invalid["code"] == "INVALID_API_KEY"
    assert invalid["message"].startswith("Forbidden")


def test_no_custom_domain_by_default() -> None:
    resources, _ = deployed()
    assert of_type(resources, "AWS::ApiGateway::DomainName") == {}
    assert of_type(resources, "AWS::ApiGateway::BasePathMapping") == {}


@pytest.mark.parametrize("with_zone", [False, True])
def test_custom_domain_maps_the_api_at_its_root(with_zone: bool) -> None:
    # GIVEN a custom domain and its certificate (and optionally a Route 53 hosted zone)
    overrides = {**DOMAIN, **({"CustomDomainHostedZoneId": "Z0123456789ABCDEFGHIJ"} if with_zone else {})}
    resources, _ = deployed(**overrides)

    # THEN a regional domain with that certificate and TLS 1.2 exists
    ((domain_id, domain),) = of_type(resources, "AWS::ApiGateway::DomainName").items()
    assert domain["Properties"]["DomainName"] == "relay.example.com"
    assert domain["Properties"]["RegionalCertificateArn"] == CERTIFICATE
    assert domain["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    assert domain["Properties"]["SecurityPolicy"] == "TLS_1_2"
    # AND the API's stage is mapped at the root (no base path), so https://relay.example.com/v1/batch works
    (mapping,) = of_type(resources, "AWS::ApiGateway::BasePathMapping").values()
    assert mapping["Properties"] == {
        "DomainName": {"Ref": domain_id},
        "RestApiId": {"Ref": "RelayApi"},
        "Stage": {"Ref": "RelayApiStage"},
    }
    # AND the alias record exists only when a hosted zone is given
    records = of_type(resources, "AWS::Route53::RecordSetGroup")
    if not with_zone:
        assert records == {}
        return
    ((_, group),) = records.items()
    (record,) = group["Properties"]["RecordSets"]
    assert group["Properties"]["HostedZoneId"] == "Z0123456789ABCDEFGHIJ"
    assert record["Name"] == "relay.example.com"
    assert record["Type"] == "A"
    assert record["AliasTarget"]["DNSName"] == {"Fn::GetAtt": [domain_id, "RegionalDomainName"]}
