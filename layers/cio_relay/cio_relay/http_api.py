"""The resolver factory and every exception handler: error -> {code, message, ...} JSON answers."""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from cio_relay import __version__
from cio_relay.errors import (
    AuthRejected,
    CallsRefused,
    CioRelayError,
    ConfigurationError,
    CustomerIOTimeout,
    EnqueueFailed,
    InvalidRequest,
    PayloadTooLarge,
    Permanent,
    RateLimited,
    Retryable,
    SendInProgress,
    StoreUnavailable,
)
from cio_relay.models import TOO_LARGE, describe
from cio_relay.observability import count, logger

NOT_JSON = {"json_invalid", "unsupported_content_type"}
# Customer.io's strict mode and every Pipelines SDK treat 400 as final (and retry a 422, then drop
# everything): these routes answer a validation error with 400.
PIPELINES_ROUTES = frozenset(
    f"/v1/{name}" for name in ("identify", "track", "page", "screen", "group", "alias", "batch")
)
# Largest decompressed Content-Encoding: gzip body the events routes take: Customer.io's 500 KB per
# request, plus room for what SDKs add (sentAt, context) and for the relay's own 413 to name the field.
MAX_INFLATED_BYTES = 1024 * 1024
GZIP_WBITS = 16 + zlib.MAX_WBITS
# A \uD800-\uDFFF escape: json.loads joins valid surrogate pairs, so only lone ones survive it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(text: str) -> Any:
    """json.loads, failing only with JSONDecodeError (which Powertools answers as invalid JSON).

    json.loads also raises RecursionError (deep nesting) and ValueError (integers over 4300 digits),
    and accepts lone surrogates that cannot be encoded as UTF-8 later: all three would be a 500.
    """
    try:
        text.encode()  # a raw lone surrogate
        value = json.loads(text)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode()
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise json.JSONDecodeError(type(exc).__name__, text, 0) from None
    return value


class ErrorBody(BaseModel):
    """Every error answer: `code` and `message` (what the Pipelines SDKs read), plus the field at fault."""

    code: str
    message: str
    field: str | None = None
    errors: list[dict[str, str | int]] | None = None
    queued_call_ids: list[str] | None = None  # 503: the calls of the request that were queued,
    not_queued: list[int] | None = None  # and the positions in `batch` of those that were not


_ERROR_DESCRIPTIONS = {
    400: "refused: Customer.io's message, a rule the relay enforces, or (Pipelines routes) validation; "
    "`field` names the part at fault, `errors` each call of a batch",
    403: "Customer.io refused an attachment's file type",
    409: "a send with this idempotency key is in progress",
    413: "over Customer.io's size limits",
    415: "the body is not JSON",
    422: "validation failed; `field` names the part at fault",
    429: "Customer.io is rate limiting the relay (Retry-After)",
    502: "Customer.io is unavailable or refused the relay's credentials",
    503: "the relay could not store the request: nothing was kept, or only the calls in queued_call_ids",
    504: "Customer.io did not answer in time",
}


def error_responses(*statuses: int) -> dict[int, Any]:
    """OpenAPI `responses` for the error answers a route can give, all shaped as ErrorBody."""
    return {
        status: {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"model": ErrorBody}},
        }
        for status in statuses
    }


QUEUED_ERRORS = error_responses(413, 415, 422, 503)
PIPELINES_ERRORS = error_responses(400, 413, 415, 503)
# Documented as such, so that the generated document does not offer Powertools' own 422 shape.
PIPELINES_NO_422 = {
    "description": "not answered: these routes answer validation errors with 400",
    "content": {"application/json": {"model": ErrorBody}},
}
PASS_THROUGH_ERRORS = error_responses(400, 415, 422, 429, 502, 503, 504)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> Response[Any]:
    body = {"code": code, "message": message, **{k: v for k, v in details.items() if v is not None}}
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def unsupported_media_type(exc: Exception | None = None) -> Response[Any]:
    count("Rejected")
    return error_response(415, "unsupported_media_type", "the request body must be a JSON object")


def validation_error(
    exc: RequestValidationError, content_type: str | None = None, status: int = 422
) -> Response[Any]:
    errors = exc.errors()
    body_errors = any(str((e.get("loc") or ("",))[0]) == "body" for e in errors)
    # A form or multipart body (curl -d sends one by default) is parsed by Powertools, not refused.
    if any(e.get("type") in NOT_JSON for e in errors) or (body_errors and not is_json(content_type)):
        return unsupported_media_type()
    problems = [dict(zip(("field", "message"), describe(e), strict=True)) for e in errors]
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    count("Rejected")
    too_large = [p for p, e in zip(problems, errors, strict=True) if e.get("type") == TOO_LARGE]
    if too_large:
        where = too_large[0]
        message = f"{where['field']}: {where['message']}"
        return error_response(413, TOO_LARGE, message, field=where["field"], errors=too_large)
    return error_response(
        status,
        "validation_error",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=problems,
    )


def invalid_request(exc: InvalidRequest) -> Response[Any]:
    count("Rejected")
    errors = exc.errors if isinstance(exc, CallsRefused) else None
    return error_response(exc.status, exc.code, exc.message, field=exc.field, errors=errors)


def rate_limited(exc: RateLimited) -> Response[Any]:
    seconds = str(math.ceil(exc.retry_after)) if exc.retry_after is not None else "1"
    return error_response(
        429, exc.code, "Customer.io is rate limiting the relay; try again later", {"Retry-After": seconds}
    )


def upstream_timeout(exc: CustomerIOTimeout) -> Response[Any]:
    return error_response(504, exc.code, "Customer.io did not answer in time")


def upstream_unavailable(exc: Retryable) -> Response[Any]:
    return error_response(502, exc.code, f"Customer.io is unavailable ({exc.status or 'no answer'})")


def upstream_auth(exc: AuthRejected) -> Response[Any]:
    logger.error("customer.io refused the relay's credentials", extra={"status": exc.status})
    return error_response(
        502, exc.code, "Customer.io refused the relay's credentials; the operator must fix the secret"
    )


def upstream_rejected(exc: Permanent) -> Response[Any]:
    status = exc.status if exc.status and 400 <= exc.status < 500 else 400
    return error_response(status, exc.code, exc.message)


def in_progress(exc: SendInProgress) -> Response[Any]:
    return error_response(409, exc.code, exc.message, {"Retry-After": "1"})


def unavailable(exc: EnqueueFailed | ConfigurationError | StoreUnavailable) -> Response[Any]:
    logger.error("relay unavailable", extra={"reason": exc.message})
    if isinstance(exc, EnqueueFailed) and exc.queued_call_ids:
        return error_response(
            503,
            exc.code,
            exc.message,
            queued_call_ids=list(exc.queued_call_ids),
            not_queued=list(exc.not_queued),
        )
    return error_response(503, exc.code, exc.message)


def unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    return error_response(500, "internal_error", "internal error")


def inflate(event: Mapping[str, Any], limit: int) -> Mapping[str, Any]:
    """The event with a `Content-Encoding: gzip` body decompressed (binary, as API Gateway passes bodies).

    Raises InvalidRequest (not gzip, truncated: 400), PayloadTooLarge (over `limit` decompressed: 413,
    found without inflating more than limit + 1 bytes) or UnsupportedEncoding (another coding: 415).
    """
    headers = event.get("headers") or {}
    coding = next((str(v) for k, v in headers.items() if k.lower() == "content-encoding"), "")
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return event
    if coding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(f"Content-Encoding {coding[:40]} is not supported; use gzip", field="body")
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8", "surrogateescape")
    out = bytearray()
    try:
        while True:  # RFC 1952 allows several members, one after another
            member = zlib.decompressobj(GZIP_WBITS)
            out += member.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise PayloadTooLarge(f"decompressed body is over {limit} bytes", field="body")
            if not member.eof:
                raise InvalidRequest("gzip body is truncated", field="body")
            data = member.unused_data
            if not data:
                break
    except zlib.error:
        raise InvalidRequest("body is not valid gzip", field="body") from None
    return {**event, "body": base64.b64encode(out).decode(), "isBase64Encoded": True}


class UnsupportedEncoding(InvalidRequest):
    code = "unsupported_media_type"
    status = 415


def proxy_result(response: Response[Any]) -> dict[str, Any]:
    """An error Response as the Lambda proxy result API Gateway takes (for answers given before routing)."""
    return {
        "statusCode": response.status_code,
        "multiValueHeaders": {"Content-Type": [content_types.APPLICATION_JSON]},
        "body": json.dumps(response.body),
        "isBase64Encoded": False,
    }


class RelayResolver(APIGatewayRestResolver):
    """The REST resolver, taking gzip bodies: decompressed (bounded) before the route validates them."""

    max_inflated_bytes = MAX_INFLATED_BYTES

    def resolve(self, event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
        try:
            event = inflate(event, self.max_inflated_bytes)
        except InvalidRequest as exc:
            return proxy_result(invalid_request(exc))
        return super().resolve(event, context)


def correlate(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Every log line of a request carries API Gateway's request id as its correlation id."""
    logger.set_correlation_id(app.current_event.request_context.request_id)
    return next_middleware(app)


def create_resolver(*, title: str, max_inflated_bytes: int = MAX_INFLATED_BYTES) -> RelayResolver:
    """A REST resolver with validation on, gzip bodies taken, every error mapped to the JSON shape."""
    app = RelayResolver(
        enable_validation=True,
        response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        json_body_deserializer=parse_json,
    )
    app.max_inflated_bytes = max_inflated_bytes
    app.use([correlate])

    def on_validation_error(exc: RequestValidationError) -> Response[Any]:
        status = 400 if app.current_event.resource in PIPELINES_ROUTES else 422
        return validation_error(exc, app.current_event.headers.get("content-type"), status)

    def not_found(exc: Exception) -> Response[Any]:
        event = app.current_event
        return error_response(404, "not_found", f"no route {event.http_method} {event.path}")

    def on_value_error(exc: ValueError) -> Response[Any]:
        # Powertools raises ValueError for a malformed multipart/form-data body (no boundary,
        # non-Latin-1 text) and UnicodeDecodeError for a base64 body that is not UTF-8: bodies this
        # API does not take, so 415 like any other body that is not JSON.
        if isinstance(exc, UnicodeDecodeError) or not is_json(app.current_event.headers.get("content-type")):
            return unsupported_media_type()
        return unexpected(exc)

    app.exception_handler(RequestValidationError)(on_validation_error)
    app.exception_handler(ValueError)(on_value_error)
    app.exception_handler(RequestUnsupportedContentType)(unsupported_media_type)
    app.exception_handler(InvalidRequest)(invalid_request)
    app.exception_handler(RateLimited)(rate_limited)
    app.exception_handler(CustomerIOTimeout)(upstream_timeout)
    app.exception_handler(Retryable)(upstream_unavailable)
    app.exception_handler(AuthRejected)(upstream_auth)
    app.exception_handler(Permanent)(upstream_rejected)
    app.exception_handler(SendInProgress)(in_progress)
    app.exception_handler([EnqueueFailed, ConfigurationError, StoreUnavailable])(unavailable)
    app.exception_handler(CioRelayError)(upstream_rejected_generic)
    app.exception_handler(Exception)(unexpected)
    app.not_found(not_found)
    app.configure_openapi(title=title, version=__version__)
    return app


def upstream_rejected_generic(exc: CioRelayError) -> Response[Any]:
    return error_response(400, exc.code, exc.message)
