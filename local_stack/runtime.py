"""Runs the real Lambda handlers in this process, one invocation at a time, with each function's env.

Lambda gives each invocation a container of its own; here both functions share one interpreter and the
layer's module-level singletons (one Logger, one Metrics, cached clients). One lock serialises every
invocation so those singletons never see two invocations at once, and each invocation runs with
exactly the environment template.yaml gives its function.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from aws_lambda_powertools.metrics.provider import cold_start

from local_stack.template import FunctionSpec

# LogRecord attributes that are not "extra" keys passed by the layer's logger.
_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


@dataclass
class LambdaContext:
    """The context object Lambda passes: names, memory, request id and a clock for the timeout."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    timeout_seconds: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        elapsed = time.monotonic() - self.started
        return max(0, int((self.timeout_seconds - elapsed) * 1000))


@dataclass(frozen=True)
class Note:
    """A warning or error the function logged during an invocation (what `make run` prints under it)."""

    level: str
    message: str
    fields: dict[str, Any]

    def line(self) -> str:
        facts = " ".join(f"{k}={v}" for k, v in self.fields.items() if k not in ("message_id",))
        message_id = self.fields.get("message_id")
        who = f" [{str(message_id)[:8]}]" if message_id else ""
        return f"{self.level.lower()}{who}: {self.message}" + (f" ({facts})" if facts else "")


def summarize(notes: list[Note], limit: int = 8) -> list[str]:
    """One line per distinct note (the same warning for 20 records is one line with a count)."""
    groups: dict[str, list[Note]] = {}
    for note in notes:
        anonymous = {k: v for k, v in note.fields.items() if k != "message_id"}
        groups.setdefault(Note(note.level, note.message, anonymous).line(), []).append(note)
    lines = []
    for members in list(groups.values())[:limit]:
        lines.append(members[0].line() + (f" x{len(members)}" if len(members) > 1 else ""))
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more kinds of warnings")
    return lines


@dataclass
class Invocation:
    function: str
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0
    notes: list[Note] = field(default_factory=list)


@dataclass
class Failure:
    """The last failure the function logged for one SQS message (shown beside dead-lettered ones)."""

    message_id: str
    reason: str
    status: str | None
    at: float


class _Capture(logging.Handler):
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(level=logging.WARNING)
        self._runtime = runtime

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_RECORD_KEYS}
        self._runtime._noted(Note(record.levelname, record.getMessage(), fields))


class Runtime:
    """Loads each function's handler from its CodeUri/Handler and invokes it."""

    def __init__(self, functions: list[FunctionSpec], *, verbose: bool = False) -> None:
        self.functions = {spec.logical_id: spec for spec in functions}
        self._verbose = verbose
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        self._current: list[Note] | None = None
        self._capture: _Capture | None = None
        self._handler_level = logging.NOTSET
        self._metrics: Any = None
        self._cold_start = cold_start.is_cold_start
        self._env_keys = {key for spec in functions for key in spec.environment}
        self.failures: deque[Failure] = deque(maxlen=5000)
        self._failure_index: dict[str, Failure] = {}

    def invoke(self, logical_id: str, event: dict[str, Any]) -> Invocation:
        spec = self.functions[logical_id]
        invocation = Invocation(function=logical_id)
        with self._lock:
            self._apply_environment(spec)
            self._current = invocation.notes
            started = time.perf_counter()
            try:
                handler = self._handler(spec)
                context = LambdaContext(
                    function_name=spec.name,
                    memory_limit_in_mb=spec.memory,
                    invoked_function_arn=f"arn:aws:lambda:{os.environ.get('AWS_REGION', 'us-east-1')}"
                    f":123456789012:function:{spec.name}",
                    timeout_seconds=spec.timeout,
                    log_group_name=f"/aws/lambda/{spec.name}",
                )
                invocation.result = handler(event, context)
            except Exception as exc:  # what Lambda reports as a function error
                invocation.error = exc
                if self._verbose:
                    traceback.print_exc()
            finally:
                invocation.elapsed = time.perf_counter() - started
                self._current = None
                if self._metrics is not None:
                    # With POWERTOOLS_METRICS_DISABLED Powertools never clears its metric set, and
                    # prints it once it holds 100 values: forget them after each invocation.
                    self._metrics.clear_metrics()
        return invocation

    def last_failure(self, message_id: str) -> Failure | None:
        return self._failure_index.get(message_id)

    def close(self) -> None:
        if self._capture is not None:
            from cio_relay.observability import logger  # noqa: PLC0415

            logging.getLogger(logger.name).removeHandler(self._capture)
            logger.registered_handler.setLevel(self._handler_level)
            cold_start.is_cold_start = self._cold_start
            self._capture = None

    # ---- internals -------------------------------------------------------------------------
    def _apply_environment(self, spec: FunctionSpec) -> None:
        for key in self._env_keys - set(spec.environment):
            os.environ.pop(key, None)
        os.environ.update(spec.environment)
        os.environ["AWS_LAMBDA_FUNCTION_NAME"] = spec.name
        os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(spec.memory)
        os.environ["AWS_LAMBDA_FUNCTION_VERSION"] = "$LATEST"
        os.environ["AWS_LAMBDA_LOG_GROUP_NAME"] = f"/aws/lambda/{spec.name}"

    def _handler(self, spec: FunctionSpec) -> Callable[[dict[str, Any], Any], Any]:
        if spec.logical_id not in self._handlers:
            module_path, _, function_name = spec.handler.rpartition(".")
            module = load_module(spec, module_path)
            self._handlers[spec.logical_id] = getattr(module, function_name)
            self._attach_capture()
        return self._handlers[spec.logical_id]

    def _attach_capture(self) -> None:
        if self._capture is not None:
            return
        from cio_relay.observability import logger, metrics  # noqa: PLC0415 - the env must be set first

        self._capture = _Capture(self)
        self._handler_level = logger.registered_handler.level
        logger.addHandler(self._capture)
        if not self._verbose:
            # The one-line summaries carry the warnings; the JSON log lines stay behind --verbose.
            logger.registered_handler.setLevel(logging.CRITICAL + 1)
            self._metrics = metrics
            # Powertools prints the ColdStart metric even with POWERTOOLS_METRICS_DISABLED set.
            self._cold_start = cold_start.is_cold_start
            cold_start.is_cold_start = False

    def _noted(self, note: Note) -> None:
        if self._current is not None:
            self._current.append(note)
        message_id = note.fields.get("message_id")
        reason = note.fields.get("reason")
        if message_id and reason:
            failure = Failure(str(message_id), str(reason), _text(note.fields.get("status")), time.time())
            self.failures.append(failure)
            self._failure_index[failure.message_id] = failure


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def load_module(spec: FunctionSpec, module_path: str) -> ModuleType:
    """Import a function's handler module under a unique name (both functions have an app.py).

    The name matches tests.support.load_function, so tests and the local stack share one module.
    """
    module_name = (
        f"cio_relay_function_{spec.code_uri.name}"
        if module_path == "app"
        else f"cio_relay_function_{spec.code_uri.name}_{module_path.replace('.', '_')}"
    )
    if module_name in sys.modules:
        return sys.modules[module_name]
    task_root = str(spec.code_uri)
    if task_root not in sys.path:  # as in Lambda: the handler's modules import their siblings
        sys.path.append(task_root)
    file = spec.code_uri.joinpath(*module_path.split(".")).with_suffix(".py")
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    if module_spec is None or module_spec.loader is None or not file.exists():
        raise FileNotFoundError(f"{spec.logical_id}: handler module {file} not found")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
