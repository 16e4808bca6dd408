"""The one Logger and Metrics of the layer, and a Tracer only when tracing is on."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "CioRelay"
F = TypeVar("F", bound=Callable[..., Any])

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "cio-relay"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE))
# Metrics are added from the send threads too; Powertools' metric set is a plain dict.
_metrics_lock = threading.Lock()


def count(name: str, value: float = 1) -> None:
    with _metrics_lock:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def record_request(elapsed_seconds: float) -> None:
    with _metrics_lock:
        metrics.add_metric(name="CustomerIORequests", unit=MetricUnit.Count, value=1)
        metrics.add_metric(
            name="CustomerIOLatency", unit=MetricUnit.Milliseconds, value=elapsed_seconds * 1000
        )


def instrument(handler: F) -> F:
    """Logger context and metrics flush around a Lambda handler; X-Ray only when TRACING_ENABLED=true.

    The X-Ray SDK costs about a quarter second at import, so the Tracer is created only when asked for.
    Everything imported by then lives as long as the container: gc.freeze() takes it out of the cyclic
    collector's walks, which otherwise cost a big batch a full pass over every module's objects.
    """
    wrapped: Any = metrics.log_metrics(handler, capture_cold_start_metric=True)
    wrapped = logger.inject_lambda_context(wrapped, clear_state=True, log_event=False)
    if os.environ.get("TRACING_ENABLED", "false").lower() == "true":
        from aws_lambda_powertools import Tracer  # noqa: PLC0415 - see docstring

        wrapped = Tracer().capture_lambda_handler(wrapped, capture_response=False)
    gc.freeze()
    result: F = wrapped
    return result
