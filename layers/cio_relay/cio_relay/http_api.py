"""The resolver factory and every exception handler: error -> {code, message, ...} JSON answers."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from cio_relay import __version__
from cio_relay.errors import (
    AuthRejected,
    CioRelayError,
    ConfigurationError,
    CustomerIOTimeout,
    EnqueueFailed,
    InvalidRequest,
    Permanent,
    RateLimited,
    Retryable,
)
from cio_relay.models import describe
from cio_relay.observability import count, logger

NOT_JSON = {"json_invalid", "unsupported_content_type"}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> Response[Any]:
    body = {"code": code, "message": message, **{k: v for k, v in details.items() if v is not None}}
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def validation_error(exc: RequestValidationError) -> Response[Any]:
    errors = exc.errors()
    if any(e.get("type") in NOT_JSON for e in errors):
        return error_response(415, "unsupported_media_type", "the request body must be a JSON object")
    problems = [dict(zip(("field", "message"), describe(e), strict=True)) for e in errors]
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    count("Rejected")
    return error_response(
        422,
        "validation_error",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=problems,
    )


def invalid_request(exc: InvalidRequest) -> Response[Any]:
    count("Rejected")
    return error_response(exc.status, exc.code, exc.message, field=exc.field)


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


def unavailable(exc: EnqueueFailed | ConfigurationError) -> Response[Any]:
    logger.error("relay unavailable", extra={"reason": exc.message})
    return error_response(503, exc.code, exc.message)


def unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    return error_response(500, "internal_error", "internal error")


def not_found(exc: Exception) -> Response[Any]:
    return error_response(404, "not_found", "no such route")


def create_resolver(*, title: str) -> APIGatewayRestResolver:
    """A REST resolver with validation on and every error mapped to DESIGN.md's JSON shape."""
    app = APIGatewayRestResolver(
        enable_validation=True, response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR
    )
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(InvalidRequest)(invalid_request)
    app.exception_handler(RateLimited)(rate_limited)
    app.exception_handler(CustomerIOTimeout)(upstream_timeout)
    app.exception_handler(Retryable)(upstream_unavailable)
    app.exception_handler(AuthRejected)(upstream_auth)
    app.exception_handler(Permanent)(upstream_rejected)
    app.exception_handler([EnqueueFailed, ConfigurationError])(unavailable)
    app.exception_handler(CioRelayError)(upstream_rejected_generic)
    app.exception_handler(Exception)(unexpected)
    app.not_found(not_found)
    app.configure_openapi(title=title, version=__version__)
    return app


def upstream_rejected_generic(exc: CioRelayError) -> Response[Any]:
    return error_response(400, exc.code, exc.message)
