"""LocalStack: moto, the template's resources, the real handlers behind a local API and SQS pollers,
and the Customer.io sandbox (or the real Customer.io), started and stopped as one thing.

    with LocalStack(Options(port=0, sandbox_port=0)) as stack:
        urllib3.request("POST", f"{stack.api_url}/v1/track", headers={"x-api-key": stack.api_key}, ...)

`python -m local_stack` (what `make run` runs) wraps it in a command line.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import boto3
import urllib3
from moto.server import ThreadedMotoServer

from local_stack.api import ApiGateway
from local_stack.customerio import CHAOS_KINDS
from local_stack.poller import QueuePoller
from local_stack.provision import Provisioner, Queue
from local_stack.runtime import Invocation, Runtime
from local_stack.sandbox import (
    MAX_CALLS_SHOWN,
    SandboxCustomerIO,
    SandboxPage,
    call_view,
    dead_letter_note,
    person_view,
)
from local_stack.template import FunctionSpec, Template, TemplateError

ROOT = Path(__file__).resolve().parents[1]
CREDENTIAL_VARIABLES = {
    "CUSTOMERIO_PIPELINES_API_KEY": "pipelines_api_key",
    "CUSTOMERIO_APP_TOKEN": "app_api_key",
    "CUSTOMERIO_SITE_ID": "site_id",
    "CUSTOMERIO_TRACK_TOKEN": "track_api_key",
}
AWS_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE")
MAX_DEAD_LETTERS_SHOWN = 100
DEAD_LETTER_CACHE_SECONDS = 1.0


@dataclass
class Options:
    """Everything `python -m local_stack --help` can set."""

    template: Path = ROOT / "template.yaml"
    host: str = "127.0.0.1"
    port: int = 3000
    sandbox_port: int = 3001
    moto_port: int = 0
    api_key: str | None = None
    customerio: str = "sandbox"  # sandbox | real (`make run ARGS=--real`)
    chaos: float = 0.0
    chaos_paths: dict[str, float] = field(default_factory=dict)
    chaos_kinds: tuple[str, ...] = CHAOS_KINDS
    seed: int | None = None
    latency: float = 0.0
    retry_base: float = 2.0
    retry_cap: float = 30.0
    parameters: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    stack_name: str = "cio-relay-local"
    region: str = "us-east-1"
    pollers: bool = True
    verbose: bool = False


class LocalStack:
    """The whole local stack. Attributes api_url, api_key, sandbox_url, moto_url are set by start()."""

    def __init__(
        self,
        options: Options | None = None,
        *,
        out: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options or Options()
        self._out = out or sys.stdout
        self._environ = dict(os.environ if environ is None else environ)
        self._print_lock = threading.Lock()
        self.api_url = ""
        self.api_key = self.options.api_key or f"local-{secrets.token_urlsafe(12)}"
        self.sandbox_url = ""
        self.moto_url = ""
        self.customerio_url = ""
        self.customerio_mode = ""
        self.ignored_variables: list[str] = []
        self._credentials: dict[str, str] = {}
        self.sandbox: SandboxCustomerIO | None = None
        self.secret_arn = ""
        self.functions: list[FunctionSpec] = []
        self.queues: dict[str, Queue] = {}
        self.pollers: list[QueuePoller] = []
        self.runtime: Runtime | None = None
        self._moto: ThreadedMotoServer | None = None
        self._api: ApiGateway | None = None
        self._page: SandboxPage | None = None
        self._saved_env: dict[str, str] | None = None
        self._clients: dict[str, Any] = {}
        self._dead_letters: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._dead_letter_lock = threading.Lock()
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        options = self.options
        template = Template(options.template)
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        self._moto = ThreadedMotoServer(ip_address=options.host, port=options.moto_port, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: start from nothing.
        urllib3.request("POST", f"{self.moto_url}/moto-api/reset")
        self._enter_environment()
        self._clients = {
            name: boto3.client(name, endpoint_url=self.moto_url, region_name=options.region)
            for name in ("sqs", "dynamodb", "secretsmanager")
        }
        credentials = self._credentials = self._customerio()
        provisioner = self._provision(template, credentials)
        self.queues = provisioner.queues
        self.functions = template.functions(provisioner.resolver)
        for spec in self.functions:
            spec.environment.update(self._local_environment())
        self.runtime = Runtime(self.functions, verbose=options.verbose)
        reset_layer_caches()
        routes = [route for spec in self.functions for route in spec.routes]
        apis = {route.api: template.api(route.api, provisioner.resolver) for route in routes}
        self._api = ApiGateway(
            routes=routes,
            apis=apis,
            invoke=self._invoke,
            api_key=self.api_key,
            report=self.log,
            host=options.host,
            port=options.port,
        )
        self.api_url = self._api.url
        self._page = SandboxPage(
            state=self.state, sandbox=self.sandbox, host=options.host, port=options.sandbox_port
        )
        self.sandbox_url = self._page.url
        if options.pollers:
            self.pollers = [
                self._poller_for(spec, index) for spec in self.functions for index in range(len(spec.sources))
            ]
        self._api.start()
        self._page.start()
        for poller in self.pollers:
            poller.start()
        if any(api.iam for api in apis.values()):
            self.log("note: ApiAuth=AWS_IAM is not emulated locally; requests are not authenticated")

    def stop(self) -> None:
        """Stop pollers (after their current batch), servers, the sandbox and moto; restore the env."""
        for poller in self.pollers:
            poller.stop()
        self.pollers = []
        for server in (self._api, self._page):
            if server is not None:
                server.stop()
        self._api = self._page = None
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        if self._moto is not None:
            urllib3.request("POST", f"{self.moto_url}/moto-api/reset")
            self._moto.stop()
            self._moto = None
        self._leave_environment()
        reset_layer_caches()
        self._started = False

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- pieces ----------------------------------------------------------------------------
    def _enter_environment(self) -> None:
        """Point every AWS client of this process at moto, with throw-away credentials."""
        self._saved_env = dict(os.environ)
        for name in (*AWS_VARIABLES, *CREDENTIAL_VARIABLES):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": self.options.region,
                "AWS_REGION": self.options.region,
            }
        )

    def _leave_environment(self) -> None:
        if self._saved_env is None:
            return
        os.environ.clear()
        os.environ.update(self._saved_env)
        self._saved_env = None

    def _customerio(self) -> dict[str, str]:
        """Start the sandbox unless asked for the real Customer.io; returns the secret's JSON values.

        CUSTOMERIO_* variables in the shell count only with `--real`: a stray key in a shell profile
        must never turn a local run into writes to a real workspace.
        """
        options = self.options
        if options.customerio not in ("sandbox", "real"):
            raise ValueError(f"customerio must be 'sandbox' or 'real', not {options.customerio!r}")
        given = {
            key: self._environ[name] for name, key in CREDENTIAL_VARIABLES.items() if self._environ.get(name)
        }
        if options.customerio == "real":
            if not given:
                raise TemplateError(
                    "--real needs Customer.io credentials in the environment: CUSTOMERIO_PIPELINES_API_KEY "
                    "(or CUSTOMERIO_SITE_ID + CUSTOMERIO_TRACK_TOKEN) and CUSTOMERIO_APP_TOKEN"
                )
            self.customerio_mode = "real"
            region = (self._environ.get("CUSTOMERIO_REGION") or "us").lower()
            self.customerio_url = self._environ.get("CUSTOMERIO_PIPELINES_URL") or f"Customer.io {region}"
            return {**given, "region": region}
        self.ignored_variables = sorted(
            name for name in self._environ if name.startswith("CUSTOMERIO_") and self._environ[name]
        )
        token = secrets.token_hex(8)
        keys = {"pipelines_api_key": f"sandbox-pipelines-{token}", "app_api_key": f"sandbox-app-{token}"}
        self.sandbox = SandboxCustomerIO(
            pipelines_api_key=keys["pipelines_api_key"],
            app_api_key=keys["app_api_key"],
            latency=options.latency,
            host=options.host,
        )
        self.sandbox.start()
        self.sandbox.set_chaos(
            options.chaos, options.chaos_paths, seed=options.seed, kinds=options.chaos_kinds
        )
        self.customerio_mode = "sandbox"
        self.customerio_url = self.sandbox.pipelines_url
        return {**keys, "region": "us"}

    def _provision(self, template: Template, credentials: dict[str, str]) -> Provisioner:
        parameters = dict(self.options.parameters)
        secret_parameter = template.parameter_feeding("CUSTOMERIO_SECRET_ID")
        secret_name = f"{self.options.stack_name}/customerio"
        secret_string = json.dumps(credentials)
        if secret_parameter and secret_parameter not in parameters:
            self.secret_arn = self._clients["secretsmanager"].create_secret(
                Name=secret_name, SecretString=secret_string
            )["ARN"]
            parameters[secret_parameter] = self.secret_arn
        provisioner = Provisioner(
            template,
            clients=self._clients,
            parameters=template.parameter_values(parameters),
            stack_name=self.options.stack_name,
            region=self.options.region,
            secret_string=secret_string,
        )
        provisioner.provision()
        if not self.secret_arn and provisioner.secrets:
            self.secret_arn = next(iter(provisioner.secrets.values()))
        return provisioner

    def _local_environment(self) -> dict[str, str]:
        """What differs from a deployment (the role env.json plays for `sam local`)."""
        env = {
            "RETRY_BASE_SECONDS": f"{self.options.retry_base:g}",
            "RETRY_CAP_SECONDS": f"{self.options.retry_cap:g}",
            "TRACING_ENABLED": "false",  # no X-Ray daemon here
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        if not self.options.verbose:
            env["POWERTOOLS_METRICS_DISABLED"] = "true"
        if self.sandbox is not None:
            env.update(self.sandbox.environment())
        else:
            for name in ("CUSTOMERIO_PIPELINES_URL", "CUSTOMERIO_APP_URL", "CUSTOMERIO_TRACK_URL"):
                if self._environ.get(name):
                    env[name] = self._environ[name]
        env.update(self.options.env)
        return env

    def _poller_for(self, spec: FunctionSpec, index: int) -> QueuePoller:
        source = spec.sources[index]
        provisioned = next(q for q in self.queues.values() if q.arn == source.queue_arn)
        dead_letter = next((q for q in self.queues.values() if q.arn == provisioned.dead_letter_arn), None)
        return QueuePoller(
            sqs=self._clients["sqs"],
            queue_name=provisioned.logical_id,
            queue_url=provisioned.url,
            queue_arn=provisioned.arn,
            region=self.options.region,
            function=spec.logical_id,
            batch_size=source.batch_size,
            window_seconds=source.window_seconds,
            max_receive_count=provisioned.max_receive_count,
            dead_letter_name=dead_letter.logical_id if dead_letter else None,
            invoke=self._invoke,
            report=self.log,
        )

    def _invoke(self, function: str, event: dict[str, Any]) -> Invocation:
        assert self.runtime is not None
        return self.runtime.invoke(function, event)

    # ---- output ----------------------------------------------------------------------------
    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._print_lock:
            print(f"{stamp} {text}", file=self._out, flush=True)

    def ops_environment(self) -> dict[str, str]:
        """The variables `cio-relay` needs to work against this stack."""
        env = {
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_DEFAULT_REGION": self.options.region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
        }
        if self.functions:
            first = self.functions[0].environment
            for name in (
                "CUSTOMERIO_SECRET_ID",
                "CUSTOMERIO_REGION",
                "CUSTOMERIO_PIPELINES_URL",
                "CUSTOMERIO_APP_URL",
                "CUSTOMERIO_TRACK_URL",
                "EVENTS_QUEUE_URL",
                "EVENTS_DLQ_URL",
                "EMAIL_QUEUE_URL",
                "EMAIL_DLQ_URL",
            ):
                if first.get(name):
                    env[name] = first[name]
        return env

    def where_calls_go(self) -> list[str]:
        """The banner's plain-words lines about which Customer.io the relay talks to."""
        if self.customerio_mode == "real":
            return [
                f"Customer.io: your REAL workspace ({self.customerio_url}), because of --real.",
                self._events_backend_line(),
                "  WARNING: real Customer.io: these calls change your workspace: people are created, "
                "updated and deleted, and emails are really sent.",
            ]
        lines = [
            "Customer.io: the local sandbox. Nothing leaves this machine; "
            f"what the sandbox received is on {self.sandbox_url}",
        ]
        if self.sandbox is not None:
            lines += [
                f"  sandbox Pipelines API {self.sandbox.pipelines_url}",
                f"  sandbox App API       {self.sandbox.app_url}",
                f"  sandbox Track API     {self.sandbox.track_url}",
            ]
        lines.append(self._events_backend_line())
        if self.ignored_variables:
            lines.append(
                f"  ignored: {', '.join(self.ignored_variables)} (set in this shell; "
                "`make run ARGS=--real` sends to the real Customer.io with them)"
            )
        return lines

    def _events_backend_line(self) -> str:
        """Which API EventsFunction uses, as the relay decides: Pipelines unless only Track keys are set."""
        keys = self._credentials
        if keys.get("pipelines_api_key"):
            return "  identities and events go to the Pipelines API (the secret has a pipelines_api_key)"
        if keys.get("site_id") and keys.get("track_api_key"):
            return (
                "  identities and events go to the Track API (the secret has only site_id + track_api_key, "
                "no pipelines_api_key)"
            )
        return "  identities and events: no Pipelines or Track credentials, EventsFunction cannot deliver"

    def banner(self) -> str:
        """What `make run` prints once everything listens: KEY=value lines first (scripts parse them)."""
        lines = [
            f"cio-relay local stack: {self.options.template.name}, stack {self.options.stack_name}, "
            f"region {self.options.region}, Customer.io {self.customerio_mode}",
            f"API_URL={self.api_url}",
            f"API_KEY={self.api_key}",
            f"SANDBOX_URL={self.sandbox_url}",
            f"CUSTOMERIO_URL={self.customerio_url}",
            f"MOTO_URL={self.moto_url}",
            *self.where_calls_go(),
        ]
        for poller in self.pollers:
            lines.append(
                f"  {poller.queue_name} -> {poller.function}: batch {poller.batch_size}, window "
                f"{poller.window_seconds:g} s, maxReceiveCount {poller.max_receive_count} "
                f"-> {poller.dead_letter_name}"
            )
        chaos = "off"
        if self.sandbox is not None:
            rates = self.sandbox.chaos_settings()["rates"]
            chaos = ", ".join(f"{'all paths' if p == '*' else p} {r:.0%}" for p, r in rates.items()) or "off"
        lines.append(
            f"  retries: base {self.options.retry_base:g} s, cap {self.options.retry_cap:g} s; chaos: {chaos}"
        )
        key = shlex.quote(f"x-api-key: {self.api_key}")
        identify = json.dumps({"userId": "user-1", "traits": {"email": "ada@example.com", "plan": "pro"}})
        email = json.dumps(
            {
                "transactional_message_id": 1,
                "to": "ada@example.com",
                "identifiers": {"id": "user-1"},
                "message_data": {"name": "Ada"},
            }
        )
        if self.customerio_mode == "real":
            target = "your REAL Customer.io workspace"
            email_note = "a REAL email to ada@example.com"
        else:
            target = f"the local sandbox ({self.sandbox_url} shows it)"
            email_note = "the sandbox records it; nothing is emailed"
        lines += [
            f"Try (these go to the local API at {self.api_url}, which forwards to {target}):",
            "  # identify user-1: queued on EventsQueue, delivered in a /v1/batch call",
            f"  curl -sS -X POST {self.api_url}/v1/identify -H {key} -H 'content-type: application/json' "
            f"-d {shlex.quote(identify)}",
            f"  # send transactional message 1: {email_note}",
            f"  curl -sS -X POST {self.api_url}/v1/send/email -H {key} -H 'content-type: application/json' "
            f"-d {shlex.quote(email)}",
            "Operations CLI against this stack (another terminal, from the repository root):",
            "  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.ops_environment().items()),
            "  .venv/bin/cio-relay dlq list",
            "READY (Ctrl-C stops everything)",
        ]
        return "\n".join(lines)

    # ---- what the sandbox page shows -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        sandbox = self.sandbox
        calls = [call_view(r) for r in sandbox.requests[-MAX_CALLS_SHOWN * 10 :]] if sandbox else []
        return {
            "api_url": self.api_url,
            "sandbox_url": self.sandbox_url,
            "moto_url": self.moto_url,
            "customerio": {
                "mode": self.customerio_mode,
                "url": self.customerio_url,
                "chaos": sandbox.chaos_settings() if sandbox else None,
                "faults_injected": sandbox.faults_injected if sandbox else {},
            },
            "queues": self._queue_depths(),
            "dead_letters": self._dead_letter_messages(),
            "people": [person_view(p) for p in sandbox.workspace.people()] if sandbox else [],
            "calls": calls,
            "emails": [
                {"delivery_id": e["delivery_id"], "queued_at": e["queued_at"], "json": e["json"]}
                for e in (sandbox.emails if sandbox else [])
            ],
        }

    def _queue_depths(self) -> list[dict[str, Any]]:
        sqs = self._clients["sqs"]
        rows = []
        for queue in self.queues.values():
            attributes = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
            target = next(
                (q.logical_id for q in self.queues.values() if q.arn == queue.dead_letter_arn), None
            )
            rows.append(
                {
                    "logical_id": queue.logical_id,
                    "name": queue.name,
                    "url": queue.url,
                    "dead_letter_queue": self._is_dead_letter_queue(queue),
                    "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
                    "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                    "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
                    "redrive": f"to {target} after {queue.max_receive_count} receives" if target else None,
                }
            )
        return rows

    def _is_dead_letter_queue(self, queue: Queue) -> bool:
        return any(q.dead_letter_arn == queue.arn for q in self.queues.values())

    def _dead_letter_messages(self) -> list[dict[str, Any]]:
        # Imported here: importing the layer creates its Logger, which must see a function's env first.
        from cio_relay_cli.dlq import peek  # noqa: PLC0415

        with self._dead_letter_lock:
            taken, cached = self._dead_letters
            if time.monotonic() - taken < DEAD_LETTER_CACHE_SECONDS:
                return cached
            rows = []
            for queue in self.queues.values():
                if not self._is_dead_letter_queue(queue):
                    continue
                for message in peek(self._clients["sqs"], queue.url, limit=MAX_DEAD_LETTERS_SHOWN):
                    rows.append(self._dead_letter_row(queue, message))
            self._dead_letters = (time.monotonic(), rows)
            return rows

    def _dead_letter_row(self, queue: Queue, message: Any) -> dict[str, Any]:
        from cio_relay_cli.dlq import attribute  # noqa: PLC0415 - see _dead_letter_messages

        reason = attribute(message, "FailureReason")
        row: dict[str, Any] = {
            "queue": queue.logical_id,
            "message_id": message["MessageId"],
            "body": message.get("Body", "")[:4000],
            "failure_reason": reason,
            "failure_status": attribute(message, "FailureStatus"),
            "receive_count": attribute(message, "ReceiveCount"),
            "moved_by": "function" if reason else "sqs",
            "note": dead_letter_note(reason),
        }
        if not reason:
            source = next((q for q in self.queues.values() if q.dead_letter_arn == queue.arn), None)
            limit = source.max_receive_count if source else None
            last = self.runtime.last_failure(message["MessageId"]) if self.runtime else None
            row["receive_count"] = str(limit) if limit else None
            row["note"] = dead_letter_note(None, moved_by_sqs_after=limit)
            if last is not None:
                row["failure_reason"] = last.reason
                row["failure_status"] = last.status
        return row


def reset_layer_caches() -> None:
    """Forget every per-container cache of the layer (settings, clients, credentials, secrets)."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("cio_relay") or module is None:
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", None) == name:
                value.cache_clear()
        reset = getattr(module, "reset", None)
        if name == "cio_relay.transactional" and callable(reset):
            reset()
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters")
    if parameters is not None:
        parameters.clear_caches()
