"""ApiKeyAuthorizer: finds the caller's relay API key the way its SDK sends it, for API Gateway to check.

A caller may present its key K as `x-api-key: K`, as the Basic username
(`Authorization: Basic base64(K:)`, any password: the Pipelines SDKs' write key) or as
`Authorization: Bearer K` (the App API clients). This function only finds K and hands it back as
`usageIdentifierKey`; with the API's ApiKeySourceType AUTHORIZER, API Gateway itself then checks K
against the usage plan's keys (an unknown key is its 403) and applies the plan's throttling.

It runs before every request (results are not cached: see docs/sdk-compatibility.md), so it
imports the standard library only; tests/unit/test_authorizer.py holds it to that.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any

# The exact message API Gateway turns into its 401 (UNAUTHORIZED) gateway response.
UNAUTHORIZED = "Unauthorized"
# principalId appears in API Gateway's logs and $context: a constant, never the key itself.
PRINCIPAL = "relay-api-key"


def header(headers: dict[str, Any] | None, name: str) -> str:
    """A header's value whatever its case (API Gateway passes names as the caller wrote them)."""
    for key, value in (headers or {}).items():
        if key.lower() == name and isinstance(value, str):
            return value.strip()
    return ""


def credential(authorization: str) -> str:
    """K from `Basic base64(K:password)` or `Bearer K`; "" when the header holds neither."""
    scheme, _, value = authorization.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value
    if scheme == "basic":
        try:
            decoded = b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0].strip()
    return ""


def api_key(headers: dict[str, Any] | None) -> str:
    """The key the caller presented: x-api-key first, then the Authorization header."""
    return header(headers, "x-api-key") or credential(header(headers, "authorization"))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    key = api_key(event.get("headers"))
    if not key:
        raise PermissionError(UNAUTHORIZED)  # API Gateway answers 401; the route's function never runs
    allow = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
    return {
        "principalId": PRINCIPAL,
        "policyDocument": {"Version": "2012-10-17", "Statement": [allow]},
        "usageIdentifierKey": key,
    }
