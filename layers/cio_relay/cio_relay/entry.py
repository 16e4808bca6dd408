"""Tells an SQS batch from an API Gateway request and routes each one; builds a function's REST side
on the first API request."""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.typing import LambdaContext

if TYPE_CHECKING:
    from cio_relay.http_api import RelayResolver


def is_sqs_batch(event: Any) -> bool:
    """An SQS event has Records whose eventSource is aws:sqs. Anything else is an API request:
    handed to the batch processor, it would read as an empty, successful batch."""
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        bool(records)
        and isinstance(records, list)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def route(
    event: dict[str, Any],
    context: LambdaContext,
    *,
    api: Callable[[dict[str, Any], LambdaContext], dict[str, Any]],
    batch: Callable[[dict[str, Any], LambdaContext], Any],
) -> Any:
    return batch(event, context) if is_sqs_batch(event) else api(event, context)


class RestSide:
    """A function's REST resolver and routes: the module `module` beside its handler (its `app`),
    imported by the first API request.

    A container that only handles queue batches never imports Powertools' event handler, the OpenAPI
    machinery or the routes' models (a tenth of a cold start). In the handler module:
    `rest = RestSide("events_api")`, `__getattr__ = rest.module_attribute` (so `app` can still be read
    from it, as the OpenAPI document and tests do), and `route(..., api=rest.resolve, ...)`.
    """

    def __init__(self, module: str) -> None:
        self._module = module
        self._resolver: RelayResolver | None = None

    def resolver(self) -> RelayResolver:
        if self._resolver is None:
            # Lambda puts the function's directory (the task root) on sys.path: the module is found there.
            resolver: RelayResolver = importlib.import_module(self._module).app
            gc.freeze()  # as instrument() does for the cold start: built once, kept by the container
            self._resolver = resolver
        return self._resolver

    def resolve(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return self.resolver().resolve(event, context)

    def module_attribute(self, name: str) -> Any:
        """A handler module's `__getattr__`: `app` is the resolver."""
        if name == "app":
            return self.resolver()
        raise AttributeError(f"module has no attribute {name!r}")
