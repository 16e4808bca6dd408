"""A local API Gateway (REST API, Lambda proxy integration) in front of the real handlers.

Each HTTP request is matched against the routes template.yaml declares, run through the API's Lambda
REQUEST authorizer when it has one (the template's own function, as API Gateway runs it), checked for
the API key the deployed API would require (from x-api-key, or from the authorizer's
`usageIdentifierKey` when ApiKeySourceType is AUTHORIZER), turned into an API Gateway REST proxy event
and handed to the function. API Gateway's own answers (unknown route, missing or unknown key,
function error) use the template's GatewayResponses when it has them, otherwise API Gateway's
defaults (`{"message": "Forbidden"}`).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from local_stack.handlers import Listening, ServeEveryMethod
from local_stack.runtime import Invocation, summarize
from local_stack.template import ApiRoute, ApiSpec, Authorizer

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's request payload limit
ACCOUNT_ID = "123456789012"


@dataclass(frozen=True)
class GatewayError:
    """One of API Gateway's own answers (it never reaches a function)."""

    status: int
    response_type: str
    message: str
    error_type: str


MISSING_ROUTE = GatewayError(
    403, "MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token", "MissingAuthenticationTokenException"
)
FORBIDDEN = GatewayError(403, "INVALID_API_KEY", "Forbidden", "ForbiddenException")
UNAUTHORIZED = GatewayError(401, "UNAUTHORIZED", "Unauthorized", "UnauthorizedException")
ACCESS_DENIED = GatewayError(
    403, "ACCESS_DENIED", "User is not authorized to access this resource", "AccessDeniedException"
)
AUTHORIZER_FAILURE = GatewayError(
    500, "AUTHORIZER_FAILURE", "Internal server error", "AuthorizerConfigurationException"
)
TOO_LARGE = GatewayError(413, "REQUEST_TOO_LARGE", "Request Too Long", "RequestTooLargeException")
FUNCTION_ERROR = GatewayError(
    502, "INTEGRATION_FAILURE", "Internal server error", "InternalServerErrorException"
)


class _Route:
    def __init__(self, route: ApiRoute, api_key_required: bool) -> None:
        self.route = route
        self.regex = route.pattern()
        self.api_key_required = api_key_required


def render_gateway_response(
    error: GatewayError, responses: dict[str, Any], request_id: str, method: str = "", path: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """API Gateway's answer for `error`, using the template's GatewayResponses (specific, then DEFAULT_*)."""
    default_kind = "DEFAULT_5XX" if error.status >= 500 else "DEFAULT_4XX"
    configured = responses.get(error.response_type) or responses.get(default_kind) or {}
    status = int(configured.get("StatusCode", error.status))
    template = (configured.get("ResponseTemplates") or {}).get("application/json")
    context = {
        "$context.error.responseType": error.response_type,
        "$context.error.messageString": json.dumps(error.message),
        "$context.error.message": error.message,
        "$context.error.validationErrorString": "",
        "$context.requestId": request_id,
        "$context.httpMethod": method,
        "$context.path": path,
    }
    if template:
        body = re.sub(r"\$context\.[A-Za-z.]+", lambda m: context.get(m.group(0), m.group(0)), str(template))
    else:
        body = json.dumps({"message": error.message})
    headers = {
        "Content-Type": "application/json",
        "x-amzn-ErrorType": error.error_type,
        **{
            name.removeprefix("gatewayresponse.header."): str(value).strip("'")
            for name, value in (configured.get("ResponseParameters") or {}).items()
        },
    }
    return status, headers, body.encode()


class ApiGateway(Listening):
    """Serves the API on host:port (0 = an ephemeral port) until stop()."""

    def __init__(
        self,
        *,
        routes: list[ApiRoute],
        apis: dict[str, ApiSpec],
        invoke: Callable[[str, dict[str, Any]], Invocation],
        api_key: str,
        report: Callable[[str], None],
        host: str = "127.0.0.1",
        port: int = 3000,
    ) -> None:
        self._apis = apis
        self._routes = [
            _Route(
                route,
                route.api_key_required
                if route.api_key_required is not None
                else apis[route.api].api_key_required,
            )
            for route in routes
        ]
        self._invoke = invoke
        self.api_key = api_key
        self._report = report
        self._listen(_Server((host, port), self), host, "local-api")

    @property
    def requires_api_key(self) -> bool:
        return any(r.api_key_required for r in self._routes)

    # ---- one request -----------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes, client_ip: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        split = urlsplit(raw_path)
        path = split.path or "/"
        match = self._match(method, path)
        if match:
            gateway_responses = self._apis[match[0].route.api].gateway_responses
        else:  # no route: still the API's own GatewayResponses (API Gateway answers for the API)
            only = list(self._apis.values())
            gateway_responses = only[0].gateway_responses if len(only) == 1 else {}
        if match is None:
            return self._gateway(method, path, MISSING_ROUTE, gateway_responses, request_id, started)
        route, parameters = match
        if len(body) > MAX_PAYLOAD_BYTES:
            return self._gateway(method, path, TOO_LARGE, gateway_responses, request_id, started)
        event = self.event(
            route.route,
            method,
            path,
            split.query,
            headers,
            body,
            parameters,
            client_ip,
            request_id,
        )
        api = self._apis[route.route.api]
        granted: dict[str, Any] = {}
        if api.authorizer is not None:
            outcome = self._authorize(api.authorizer, event)
            if isinstance(outcome, GatewayError):
                return self._gateway(method, path, outcome, gateway_responses, request_id, started)
            granted = outcome
        if api.api_key_source == "AUTHORIZER":
            supplied_key = granted.get("usageIdentifierKey")
        else:
            supplied_key = next((v for k, v in headers if k.lower() == "x-api-key"), None)
        if route.api_key_required and supplied_key != self.api_key:
            return self._gateway(method, path, FORBIDDEN, gateway_responses, request_id, started)
        context = event["requestContext"]
        if route.api_key_required:
            context["identity"].update(apiKey=supplied_key, apiKeyId="local")
        if granted:
            context["authorizer"] = {
                "principalId": granted.get("principalId"),
                **(granted.get("context") or {}),
            }
        invocation = self._invoke(route.route.function, event)
        try:
            status, response_headers, payload = proxy_response(invocation)
        except ValueError as exc:
            self._report(f"API  {method} {path} -> {route.route.function}: bad proxy response: {exc}")
            return self._gateway(method, path, FUNCTION_ERROR, gateway_responses, request_id, started)
        response_headers.append(("x-amzn-RequestId", request_id))
        lines = [
            f"API  {method} {path} -> {route.route.function} {status} "
            f"({(time.perf_counter() - started) * 1000:.0f} ms)"
        ]
        lines.extend(f"     {line}" for line in summarize(invocation.notes))
        self._report("\n".join(lines))
        return status, response_headers, payload

    def _authorize(self, authorizer: Authorizer, event: dict[str, Any]) -> dict[str, Any] | GatewayError:
        """Run a REQUEST authorizer as API Gateway does: its answer, or API Gateway's error for it."""
        present = {name.lower() for name, value in (event["headers"] or {}).items() if value}
        if any(
            header.removeprefix("method.request.header.").lower() not in present
            for header in authorizer.headers
        ):
            return UNAUTHORIZED  # an identity source is missing: the authorizer is not even called
        context = event["requestContext"]
        method_arn = (
            f"arn:aws:execute-api:us-east-1:{ACCOUNT_ID}:{context['apiId']}/{context['stage']}"
            f"/{event['httpMethod']}{event['path']}"
        )
        request = {k: v for k, v in event.items() if k not in ("body", "isBase64Encoded")}
        invocation = self._invoke(
            authorizer.function, {"type": "REQUEST", "methodArn": method_arn, **request}
        )
        if invocation.error is not None:
            return UNAUTHORIZED if str(invocation.error) == "Unauthorized" else AUTHORIZER_FAILURE
        result = invocation.result
        if not isinstance(result, dict) or "principalId" not in result or "policyDocument" not in result:
            return AUTHORIZER_FAILURE
        return result if allows(result["policyDocument"], method_arn) else ACCESS_DENIED

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self._routes:
            found = route.regex.match(path)
            if found and route.route.method in (method, "ANY"):
                return route, found.groupdict()
        return None

    def _gateway(
        self,
        method: str,
        path: str,
        error: GatewayError,
        responses: dict[str, Any],
        request_id: str,
        started: float,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, body = render_gateway_response(error, responses, request_id, method, path)
        headers["x-amzn-RequestId"] = request_id
        self._report(
            f"API  {method} {path} {status} {error.response_type} "
            f"({(time.perf_counter() - started) * 1000:.0f} ms)"
        )
        return status, list(headers.items()), body

    def event(
        self,
        route: ApiRoute,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        parameters: dict[str, str],
        client_ip: str,
        request_id: str,
    ) -> dict[str, Any]:
        """The REST API proxy event API Gateway would send for this request."""
        stage = self._apis[route.api].stage
        host = next((v for k, v in headers if k.lower() == "host"), "127.0.0.1")
        all_headers = [*headers, ("X-Forwarded-For", client_ip), ("X-Forwarded-Proto", "http")]
        multi_headers: dict[str, list[str]] = {}
        for name, value in all_headers:
            multi_headers.setdefault(name, []).append(value)
        pairs = parse_qsl(query, keep_blank_values=True)
        multi_query: dict[str, list[str]] = {}
        for name, value in pairs:
            multi_query.setdefault(name, []).append(value)
        try:
            text: str | None = body.decode("utf-8") if body else None
            is_base64 = False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
        now = datetime.now(UTC)
        user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": method,
            "headers": {name: values[-1] for name, values in multi_headers.items()},
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": parameters or None,
            "stageVariables": None,
            "requestContext": {
                "accountId": ACCOUNT_ID,
                "apiId": "local",
                "domainName": host,
                "extendedRequestId": request_id,
                "httpMethod": method,
                "identity": {
                    "sourceIp": client_ip,
                    "userAgent": user_agent,
                    "apiKey": None,
                    "apiKeyId": None,
                    "caller": None,
                    "user": None,
                    "userArn": None,
                },
                "path": f"/{stage}{path}",
                "protocol": "HTTP/1.1",
                "requestId": request_id,
                "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "requestTimeEpoch": int(now.timestamp() * 1000),
                "resourceId": "local",
                "resourcePath": route.path,
                "stage": stage,
            },
            "body": text,
            "isBase64Encoded": is_base64,
        }


def allows(policy: Any, method_arn: str) -> bool:
    """An IAM policy document allows execute-api:Invoke on method_arn (an explicit Deny wins)."""
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    allowed = False
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, dict):
            continue
        actions = statement.get("Action")
        resources = statement.get("Resource")
        actions = actions if isinstance(actions, list) else [actions]
        resources = resources if isinstance(resources, list) else [resources]
        matches = any(fnmatch.fnmatchcase("execute-api:Invoke", str(a)) for a in actions) and any(
            fnmatch.fnmatchcase(method_arn, str(r)) for r in resources
        )
        if matches and statement.get("Effect") == "Deny":
            return False
        allowed = allowed or (matches and statement.get("Effect") == "Allow")
    return allowed


def proxy_response(invocation: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    """A Lambda proxy result as an HTTP answer; ValueError when Lambda/API Gateway would call it malformed."""
    if invocation.error is not None:
        raise ValueError(f"the function raised {type(invocation.error).__name__}: {invocation.error}")
    result = invocation.result
    if not isinstance(result, dict) or "statusCode" not in result:
        raise ValueError("the function did not return a proxy response with a statusCode")
    status = int(result["statusCode"])
    headers: list[tuple[str, str]] = []
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    for name, values in multi.items():
        headers.extend((name, str(v)) for v in values)
    headers.extend((name, str(value)) for name, value in single.items() if name not in multi)
    body = result.get("body") or ""
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    return status, headers, payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], gateway: ApiGateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)


class _Handler(ServeEveryMethod):
    server_version = "cio-relay-local"

    def _serve(self) -> None:
        gateway = cast(_Server, self.server).gateway
        length = int(self.headers.get("Content-Length") or 0)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        status, headers, payload = gateway.handle(
            self.command, self.path, list(self.headers.items()), body, self.client_address[0]
        )
        self.send_response(status)
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()
