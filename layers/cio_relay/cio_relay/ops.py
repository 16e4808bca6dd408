"""Operations CLI: `python -m cio_relay.ops doctor | dlq list | dlq show | dlq redrive`.

Works against a deployed stack (`--stack NAME`: queue URLs and the functions' own environment come
from CloudFormation and Lambda) and locally (the same environment variables the functions read;
AWS_ENDPOINT_URL points boto3 at the local stack's moto). Key values are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cio_relay.cio.transport import Transport
from cio_relay.credentials import Credentials, CredentialsProvider
from cio_relay.errors import (
    AuthRejected,
    ConfigurationError,
    CustomerIOError,
    CustomerIOTimeout,
    Permanent,
    RateLimited,
)
from cio_relay.settings import APP_HOSTS, PIPELINES_HOSTS, Settings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, MessageTypeDef

AWS_ERRORS = (BotoCoreError, ClientError)
# The attributes delivery.py puts on a message it dead-letters; dropped when a message is redriven.
REASON_ATTRIBUTES = ("FailureReason", "FailureStatus", "SourceMessageId", "ReceiveCount")
QUEUES = {
    "events": ("EventsQueue", "EventsDeadLetterQueue"),
    "email": ("EmailQueue", "EmailDeadLetterQueue"),
}
# Which credentials each function needs (EventsFunction also serves search and segments).
NEEDS = {"EventsFunction": ("pipelines", "app"), "EmailFunction": ("app",)}
PIPELINES_PATHS = frozenset(
    f"/v1/{name}" for name in ("identify", "track", "page", "screen", "group", "alias", "batch")
)
SECRET_SHAPE = '{"pipelines_api_key": "...", "app_api_key": "...", "region": "us"}'  # noqa: S105
PIPELINES_KEY_HELP = (
    "the API key of your Data Pipelines HTTP source (Customer.io: Data Pipelines > Sources > "
    "your HTTP API source > API key)"
)
APP_KEY_HELP = "an App API key (Customer.io: Settings > API credentials > App API keys)"


# ---- output ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One doctor line: what was checked, whether it passed, and how to fix it when it did not."""

    ok: bool
    what: str
    fix: str | None = None

    def line(self, marks: tuple[str, str] = ("✓", "✗")) -> str:
        text = f"{marks[0] if self.ok else marks[1]} {self.what}"
        return f"{text} — fix: {self.fix}" if self.fix and not self.ok else text


def _marks(out: TextIO) -> tuple[str, str]:
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        "✓✗—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ("OK  ", "FAIL")
    return ("✓", "✗")


def _safe_url(url: str) -> str:
    """The URL without user info or query (either could carry a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# ---- where the configuration comes from -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A function's view of the configuration: its environment variables."""

    function: str
    env: Mapping[str, str]


class Aws:
    """boto3 clients for one profile/region (AWS_ENDPOINT_URL is honoured by boto3 itself)."""

    def __init__(self, profile: str | None = None, region: str | None = None) -> None:
        self.session = boto3.session.Session(profile_name=profile, region_name=region)

    def sqs(self) -> SQSClient:
        return self.session.client("sqs")

    def client(self, service: str) -> Any:
        return self.session.client(service)  # type: ignore[call-overload]

    def stack_resources(self, stack: str) -> dict[str, str]:
        """Logical id -> physical id of every resource of a CloudFormation stack."""
        paginator = self.client("cloudformation").get_paginator("list_stack_resources")
        resources: dict[str, str] = {}
        for page in paginator.paginate(StackName=stack):
            for summary in page["StackResourceSummaries"]:
                resources[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId", "")
        return resources

    def stack_queue_urls(self, stack: str) -> dict[str, str]:
        """Queue logical id -> URL from the stack's outputs (`EventsDeadLetterQueueUrl` ...), else its
        resources (an SQS queue's physical id is its URL)."""
        described = self.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
        urls = {
            output["OutputKey"].removesuffix("Url"): output["OutputValue"]
            for output in described.get("Outputs") or []
            if output["OutputKey"].endswith("QueueUrl")
        }
        if all(logical in urls for pair in QUEUES.values() for logical in pair):
            return urls
        return {**self.stack_resources(stack), **urls}

    def function_environment(self, name: str) -> dict[str, str]:
        configuration = self.client("lambda").get_function_configuration(FunctionName=name)
        variables: dict[str, str] = (configuration.get("Environment") or {}).get("Variables") or {}
        return variables


def targets(aws: Aws, stack: str | None, environ: Mapping[str, str]) -> list[Target]:
    """Each function's environment: from Lambda for a deployed stack, else this process's env."""
    if not stack:
        return [Target(function, environ) for function in NEEDS]
    resources = aws.stack_resources(stack)
    return [
        Target(function, aws.function_environment(resources[function]))
        for function in NEEDS
        if function in resources
    ]


# ---- doctor ---------------------------------------------------------------------------------


@dataclass
class Secret:
    """What a configuration's credentials look like, read once per secret."""

    source: str
    data: dict[str, Any] | None
    check: Check


def read_secret(aws: Aws, settings: Settings) -> Secret:
    if not settings.secret_id:
        local = {
            "pipelines_api_key": settings.local_pipelines_api_key,
            "app_api_key": settings.local_app_api_key,
            "site_id": settings.local_site_id,
            "track_api_key": settings.local_track_api_key,
        }
        return Secret(
            "environment variables CUSTOMERIO_*",
            {k: v for k, v in local.items() if v},
            Check(
                True, "CUSTOMERIO_SECRET_ID is not set: credentials come from CUSTOMERIO_* variables (local)"
            ),
        )
    source = f"secret {settings.secret_id}"
    try:
        answer = aws.client("secretsmanager").get_secret_value(SecretId=settings.secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        fixes = {
            "ResourceNotFoundException": "create the secret, or point CustomerIoSecretArn "
            "(CUSTOMERIO_SECRET_ID) at the right one",
            "AccessDeniedException": "allow secretsmanager:GetSecretValue on it for this caller "
            "(the function roles already have it)",
            "DecryptionFailure": "allow kms:Decrypt on the secret's KMS key (CustomerIoSecretKmsKeyArn)",
        }
        return Secret(source, None, Check(False, f"{source} not readable ({code})", fixes.get(code, code)))
    except BotoCoreError as exc:
        fix = "configure AWS credentials and region (AWS_PROFILE, AWS_REGION) or AWS_ENDPOINT_URL"
        return Secret(source, None, Check(False, f"{source} not readable ({type(exc).__name__})", fix))
    try:
        data = json.loads(answer.get("SecretString") or "")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Secret(source, None, Check(False, f"{source} is not a JSON object", f"store {SECRET_SHAPE}"))
    names = ", ".join(sorted(k for k, v in data.items() if v not in (None, "")))
    return Secret(source, data, Check(True, f"{source} readable: JSON with {names or 'no keys'}"))


def _in_secret(secret: Secret, key: str, variable: str) -> str:
    if secret.source.startswith("secret"):
        return f'add "{key}" to {secret.source}'
    return f"set {variable}"


def function_keys(target: Target, secret: Secret) -> Check:
    data = secret.data or {}
    missing: list[str] = []
    have: list[str] = []
    if "pipelines" in NEEDS[target.function]:
        if data.get("pipelines_api_key"):
            have.append("Pipelines key (pipelines_api_key)")
        elif data.get("site_id") and data.get("track_api_key"):
            have.append("Pipelines credential (site_id + track_api_key)")
        else:
            missing.append(
                f"{_in_secret(secret, 'pipelines_api_key', 'CUSTOMERIO_PIPELINES_API_KEY')}: "
                f"{PIPELINES_KEY_HELP}"
            )
    if "app" in NEEDS[target.function]:
        if data.get("app_api_key"):
            have.append("App API key (app_api_key)")
        else:
            missing.append(f"{_in_secret(secret, 'app_api_key', 'CUSTOMERIO_APP_TOKEN')}: {APP_KEY_HELP}")
    if missing:
        return Check(False, f"{target.function} lacks credentials it needs", "; ".join(missing))
    return Check(True, f"{target.function} has the credentials it needs: {', '.join(have)}")


def _host_region(url: str | None, hosts: Mapping[str, str]) -> str | None:
    if not url:
        return None
    host = urlsplit(url).hostname or ""
    return next((region for region, base in hosts.items() if urlsplit(base).hostname == host), None)


def region_check(settings: Settings, env: Mapping[str, str], secret: Secret) -> Check:
    secret_region = str((secret.data or {}).get("region") or "").strip().lower() or None
    env_region = (env.get("CUSTOMERIO_REGION") or "").strip().lower() or None
    effective = secret_region or settings.region
    problems: list[str] = []
    if secret_region not in (None, "us", "eu"):
        problems.append(f'the secret\'s region is "{secret_region}"; use "us" or "eu"')
    if secret_region and env_region and secret_region != env_region:
        problems.append(
            f"the secret says {secret_region} but CUSTOMERIO_REGION is {env_region} (the secret wins): "
            f"make CustomerIoRegion match"
        )
    for variable, url, own, other in (
        ("CUSTOMERIO_PIPELINES_URL", settings.pipelines_url, PIPELINES_HOSTS, APP_HOSTS),
        ("CUSTOMERIO_APP_URL", settings.app_url, APP_HOSTS, PIPELINES_HOSTS),
    ):
        host_region = _host_region(url, own)
        if host_region and host_region != effective:
            problems.append(f"{variable} is a {host_region} host but the region is {effective}")
        if _host_region(url, other):
            problems.append(f"{variable} points at the other API's host")
    key = str((secret.data or {}).get("pipelines_api_key") or "")
    for region in ("us", "eu"):
        if key.startswith((f"pk_{region}_", f"sk_{region}_")) and region != effective:
            problems.append(f"the Pipelines key is a {region} key but the region is {effective}")
    if problems:
        return Check(False, "region inconsistent", "; ".join(problems))
    custom = [name for name, url in (("Pipelines", settings.pipelines_url), ("App", settings.app_url)) if url]
    note = f"; custom {' and '.join(custom)} URL not checked" if custom else ""
    return Check(
        True,
        f"region {effective} consistent ({urlsplit(settings.pipelines_base(effective)).hostname}, "
        f"{urlsplit(settings.app_base(effective)).hostname}){note}",
    )


def _credentials(settings: Settings, secret: Secret) -> Credentials:
    data = secret.data or {}

    def already_read(name: str, *, force_fetch: bool) -> Any:
        return data

    return CredentialsProvider(settings, reader=already_read).get()


def app_key_check(transport: Transport, settings: Settings, credentials: Credentials) -> Check:
    base = settings.app_base(credentials.region)
    host = urlsplit(base).hostname
    started = time.perf_counter()
    try:
        response = transport.request(
            "GET",
            f"{base}/v1/segments",
            what="GET /v1/segments",
            headers={"Authorization": credentials.app_authorization()},
        )
    except AuthRejected as exc:
        return Check(
            False,
            f"App API key rejected by {host} ({exc.status}, {_ms(time.perf_counter() - started)})",
            f"put {APP_KEY_HELP} in app_api_key; an EU workspace needs region eu",
        )
    except CustomerIOError as exc:
        return _unreachable("App API", host, exc)
    segments = response.json().get("segments") if isinstance(response.json(), dict) else None
    count = f", {len(segments)} segments" if isinstance(segments, list) else ""
    return Check(
        True,
        f"App API key accepted (GET {host}/v1/segments: {response.status}{count}, {_ms(response.elapsed)})",
    )


def pipelines_key_check(transport: Transport, settings: Settings, credentials: Credentials) -> Check:
    """POST /v1/batch with an empty batch in strict mode: Customer.io checks the key first (401 when
    rejected), then refuses the empty batch with 400. A 400 therefore proves the key without creating
    any data; a 200 (strict mode not applied) is accepted as well, since an empty batch creates nothing."""
    base = settings.pipelines_base(credentials.region)
    host = urlsplit(base).hostname
    started = time.perf_counter()
    try:
        response = transport.request(
            "POST",
            f"{base}/v1/batch",
            what="POST /v1/batch",
            headers={"Authorization": credentials.pipelines_authorization(), "X-Strict-Mode": "1"},
            body=b'{"batch":[]}',
        )
    except AuthRejected as exc:
        return Check(
            False,
            f"Pipelines key rejected by {host} ({exc.status}, {_ms(time.perf_counter() - started)})",
            f"put {PIPELINES_KEY_HELP} in pipelines_api_key (a Track API key is not one); "
            "an EU workspace needs region eu",
        )
    except Permanent as exc:
        if exc.status == 400:
            return Check(
                True,
                f"Pipelines key accepted (POST {host}/v1/batch with an empty strict-mode batch: 400 as "
                f"expected, nothing created, {_ms(time.perf_counter() - started)})",
            )
        return _unreachable("Pipelines API", host, exc)
    except CustomerIOError as exc:
        return _unreachable("Pipelines API", host, exc)
    return Check(
        True,
        f"Pipelines key accepted (POST {host}/v1/batch with an empty batch: {response.status}, "
        f"nothing created, {_ms(response.elapsed)})",
    )


def _unreachable(api: str, host: str | None, exc: CustomerIOError) -> Check:
    if exc.status is None:
        return Check(
            False,
            f"{api} at {host} not reachable: {exc.message}",
            f"allow HTTPS egress to {host} (NAT gateway, proxy, firewall) and check DNS",
        )
    return Check(
        False,
        f"{api} at {host} answered {exc.status}: {exc.message}",
        "check status.customer.io and the configured URL, then run doctor again",
    )


def connector_check(
    transport: Transport,
    settings: Settings,
    credentials: Credentials,
    *,
    url: str,
    method: str,
    data: str | None,
    auth: str,
) -> Check:
    """Try one URL and method with the configured credentials and say what the answer means."""
    shown = f"{method} {_safe_url(url)}"
    if auth == "auto":
        auth = _auth_for(url, settings)
    try:
        headers = _auth_headers(auth, credentials)
    except ConfigurationError as exc:
        return Check(False, f"{shown}: {exc.message}", "add the missing credential, then try again")
    started = time.perf_counter()
    try:
        response = transport.request(
            method,
            url,
            what=f"{method} {urlsplit(url).path}",
            headers=headers,
            body=data.encode() if data else None,
        )
    except CustomerIOError as exc:
        return answer_meaning(exc, f"{shown}: ", time.perf_counter() - started, auth, settings)
    note = " (sent without credentials)" if auth == "none" else ""
    return Check(True, f"{shown}: {response.status} in {_ms(response.elapsed)}: accepted{note}")


def _auth_headers(auth: str, credentials: Credentials) -> dict[str, str]:
    if auth == "pipelines":
        return {"Authorization": credentials.pipelines_authorization(), "X-Strict-Mode": "1"}
    if auth == "app":
        return {"Authorization": credentials.app_authorization()}
    return {}


def answer_meaning(exc: CustomerIOError, shown: str, elapsed: float, auth: str, settings: Settings) -> Check:
    """What a failed answer means for the relay, as a doctor line."""
    took = f"{exc.status} in {_ms(elapsed)}"
    if isinstance(exc, AuthRejected):
        return Check(
            False,
            f"{shown}{took}: credentials ({auth}) rejected",
            "use the key of this API and region (the other doctor lines say which one is wrong)",
        )
    if isinstance(exc, RateLimited):
        return Check(
            True,
            f"{shown}{took}: reachable and authenticated, rate limited right now (the relay retries later)",
        )
    if isinstance(exc, Permanent) and exc.status in (404, 405):
        return Check(
            False,
            f"{shown}{took}: no such endpoint or method at this host",
            "check the path, the method and the region's host",
        )
    if isinstance(exc, Permanent):
        return Check(
            True,
            f"{shown}{took}: reachable and authenticated; the request itself was refused "
            f"({exc.message}); the relay dead-letters such a call",
        )
    if isinstance(exc, CustomerIOTimeout):
        return Check(
            False,
            f"{shown}no answer within {settings.read_timeout:g} s",
            "check Customer.io's status and the network path; the relay retries timeouts",
        )
    return Check(
        False,
        f"{shown}{exc.message}" + (f" ({_ms(elapsed)})" if exc.status is None else ""),
        "allow HTTPS egress to the host (NAT gateway, proxy, firewall) and check DNS"
        if exc.status is None
        else "a server error: check status.customer.io; the relay retries these with backoff",
    )


def _auth_for(url: str, settings: Settings) -> str:
    host = urlsplit(url).hostname or ""
    path = urlsplit(url).path
    pipelines = {urlsplit(settings.pipelines_base(r)).hostname for r in ("us", "eu")}
    apps = {urlsplit(settings.app_base(r)).hostname for r in ("us", "eu")}
    pipelines |= {urlsplit(u).hostname for u in PIPELINES_HOSTS.values()}
    apps |= {urlsplit(u).hostname for u in APP_HOSTS.values()}
    if host in pipelines and host in apps:  # one host serves both (a proxy, the local sandbox)
        return "pipelines" if path in PIPELINES_PATHS else "app"
    if host in pipelines:
        return "pipelines"
    if host in apps:
        return "app"
    return "none"  # never send Customer.io credentials to a host nobody configured


class Doctor:
    """Runs the checks for each function's configuration, each distinct check once."""

    def __init__(self, aws: Aws, transport_for: Callable[[Settings], Transport] | None = None) -> None:
        self._aws = aws
        self._transport_for = transport_for or (
            lambda s: Transport(connect_timeout=s.connect_timeout, read_timeout=s.read_timeout)
        )
        self.checks: list[Check] = []
        self._secrets: dict[str | None, Secret] = {}
        self._done: set[tuple[str, ...]] = set()
        self.last: tuple[Settings, Credentials] | None = None

    def _once(self, *key: str | None) -> bool:
        marker = tuple(str(k) for k in key)
        if marker in self._done:
            return False
        self._done.add(marker)
        return True

    def target(self, target: Target) -> None:
        try:
            settings = load_settings(target.env)
        except ConfigurationError as exc:
            self.checks.append(Check(False, f"{target.function} configuration: {exc.message}", "fix it"))
            return
        if settings.secret_id not in self._secrets:
            self._secrets[settings.secret_id] = read_secret(self._aws, settings)
            self.checks.append(self._secrets[settings.secret_id].check)
        secret = self._secrets[settings.secret_id]
        if secret.data is None:
            return
        self.checks.append(function_keys(target, secret))
        try:
            credentials = _credentials(settings, secret)
        except ConfigurationError as exc:
            self.checks.append(Check(False, exc.message, 'set "region" to "us" or "eu"'))
            return
        self.last = (settings, credentials)
        if self._once(
            "region", settings.secret_id, settings.pipelines_url, settings.app_url, settings.region
        ):
            self.checks.append(region_check(settings, target.env, secret))
        for kind in NEEDS[target.function]:
            self._probe(kind, settings, credentials)

    def _probe(self, kind: str, settings: Settings, credentials: Credentials) -> None:
        probe = app_key_check if kind == "app" else pipelines_key_check
        base = settings.app_base if kind == "app" else settings.pipelines_base
        if not self._once(kind, base(credentials.region), settings.secret_id):
            return
        with contextlib.suppress(ConfigurationError):  # a missing key is reported by function_keys
            self.checks.append(probe(self._transport_for(settings), settings, credentials))

    def connector(self, url: str, method: str, data: str | None, auth: str) -> None:
        if self.last is None:
            self.checks.append(Check(False, f"{method} {_safe_url(url)}: no usable configuration", None))
            return
        settings, credentials = self.last
        transport = self._transport_for(settings)
        self.checks.append(
            connector_check(transport, settings, credentials, url=url, method=method, data=data, auth=auth)
        )


def doctor(
    aws: Aws,
    target_list: Sequence[Target],
    *,
    transport_for: Callable[[Settings], Transport] | None = None,
    check_url: str | None = None,
    method: str = "GET",
    data: str | None = None,
    auth: str = "auto",
) -> list[Check]:
    """Every check, in order; the caller prints them and exits non-zero if any failed."""
    if not target_list:
        return [Check(False, "no function found", "check --stack (the CloudFormation stack name)")]
    run = Doctor(aws, transport_for)
    for target in target_list:
        run.target(target)
    if check_url:
        run.connector(check_url, method, data, auth)
    return run.checks


# ---- dead-letter queues ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePair:
    name: str  # "events" or "email"
    dlq_url: str
    source_url: str | None


def queue_pairs(args: argparse.Namespace, aws: Aws, environ: Mapping[str, str]) -> dict[str, QueuePair]:
    """Dead-letter queues (and their sources) from flags, else --stack, else the environment."""
    resources = aws.stack_queue_urls(args.stack) if args.stack else {}
    pairs: dict[str, QueuePair] = {}
    for name, (source_id, dlq_id) in QUEUES.items():
        prefix = name.upper()
        dlq = getattr(args, f"{name}_dlq_url") or resources.get(dlq_id) or environ.get(f"{prefix}_DLQ_URL")
        source = (
            getattr(args, f"{name}_queue_url")
            or resources.get(source_id)
            or environ.get(f"{prefix}_QUEUE_URL")
        )
        if dlq:
            pairs[name] = QueuePair(name, dlq, source or None)
    return pairs


def depth(sqs: SQSClient, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def peek(sqs: SQSClient, url: str, *, limit: int = 10, hold_seconds: int = 20) -> list[MessageTypeDef]:
    """Up to `limit` messages, read and then made visible again at once (nothing is consumed)."""
    seen: dict[str, MessageTypeDef] = {}
    handles: list[str] = []
    try:
        while len(seen) < limit:
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(10, limit - len(seen)),
                VisibilityTimeout=hold_seconds,
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            for message in batch:
                handles.append(message["ReceiptHandle"])
                seen.setdefault(message["MessageId"], message)
    finally:
        for start in range(0, len(handles), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start : start + 10])
            ]
            sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
    return list(seen.values())


def attribute(message: Mapping[str, Any], name: str) -> str | None:
    value = (message.get("MessageAttributes") or {}).get(name) or {}
    text = value.get("StringValue")
    return None if text is None else str(text)


def summary(queue: str, body: str) -> str:
    """What a message is, without personal data: call types and event names, or the email template."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"non-JSON body, {len(body.encode())} bytes"
    if not isinstance(data, dict):
        return f"JSON {type(data).__name__}, {len(body.encode())} bytes"
    if queue == "email":
        recipients = sum(
            len([a for a in str(data.get(k) or "").split(",") if a.strip()]) for k in ("to", "cc", "bcc")
        )
        template = data.get("transactional_message_id")
        what = f"template {template!r}" if template is not None else "inline email"
        return f"{what}, {recipients} recipient(s)"
    calls = data["batch"] if isinstance(data.get("batch"), list) else [data]
    described = []
    for call in calls[:5]:
        if isinstance(call, dict):
            event = f" {call['event']!r}" if call.get("type") == "track" and call.get("event") else ""
            described.append(f"{call.get('type', '?')}{event}")
    more = f" (+{len(calls) - 5} more)" if len(calls) > 5 else ""
    prefix = f"batch of {len(calls)}: " if "batch" in data else ""
    return prefix + ", ".join(described) + more


def dlq_list(sqs: SQSClient, pairs: Mapping[str, QueuePair], out: TextIO) -> int:
    for pair in pairs.values():
        visible, in_flight = depth(sqs, pair.dlq_url)
        name = pair.dlq_url.rstrip("/").rsplit("/", 1)[-1]
        flight = f" ({in_flight} in flight)" if in_flight else ""
        print(f"{pair.name:<7} {name:<40} {visible} message(s){flight}", file=out)
    return 0


def dlq_show(
    sqs: SQSClient, pair: QueuePair, out: TextIO, *, limit: int, bodies: bool, max_chars: int
) -> int:
    messages = peek(sqs, pair.dlq_url, limit=limit)
    visible, _ = depth(sqs, pair.dlq_url)
    print(f"{pair.name} dead-letter queue: showing {len(messages)} of {visible}", file=out)
    for message in messages:
        attributes = message.get("Attributes") or {}
        sent = attributes.get("SentTimestamp")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(sent) / 1000)) if sent else "?"
        reason = attribute(message, "FailureReason")
        status = attribute(message, "FailureStatus")
        body = message.get("Body", "")
        print(f"- {message['MessageId']}  sent {when} UTC", file=out)
        if reason:
            print(f"  reason: [{status or '?'}] {reason}", file=out)
        else:
            print(
                "  reason: moved by SQS after maxReceiveCount receives (retryable failures); "
                "the function's logs hold each attempt (search for the message id)",
                file=out,
            )
        print(f"  what:   {summary(pair.name, body)}", file=out)
        if bodies:
            cut = body if len(body) <= max_chars else body[:max_chars] + f"... ({len(body)} chars)"
            print(f"  body:   {cut}", file=out)
    return 0


def _arn(sqs: SQSClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def source_of(sqs: SQSClient, pair: QueuePair) -> str | None:
    if pair.source_url:
        return pair.source_url
    sources = sqs.list_dead_letter_source_queues(QueueUrl=pair.dlq_url).get("queueUrls", [])
    return sources[0] if len(sources) == 1 else None


def dlq_redrive(
    sqs: SQSClient, pair: QueuePair, out: TextIO, *, move_task: bool = True, wait: bool = False
) -> int:
    """Move every message of a dead-letter queue back to its source queue."""
    source = source_of(sqs, pair)
    if not source:
        print(f"{pair.name}: source queue unknown; pass --{pair.name}-queue-url", file=out)
        return 2
    if move_task:
        try:
            handle = sqs.start_message_move_task(
                SourceArn=_arn(sqs, pair.dlq_url), DestinationArn=_arn(sqs, source)
            )["TaskHandle"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            print(
                f"{pair.name}: StartMessageMoveTask unavailable ({code}); moving messages one by one",
                file=out,
            )
        else:
            print(f"{pair.name}: SQS move task started ({handle[:24]}...)", file=out)
            return _wait_for_task(sqs, pair, out) if wait else 0
    moved, failed = move_messages(sqs, pair.dlq_url, source)
    print(f"{pair.name}: moved {moved} message(s) back to {source.rsplit('/', 1)[-1]}", file=out)
    if failed:
        print(f"{pair.name}: {failed} message(s) could not be sent; they stay on the DLQ", file=out)
    return 1 if failed else 0


def _wait_for_task(sqs: SQSClient, pair: QueuePair, out: TextIO, timeout: float = 900) -> int:
    deadline = time.monotonic() + timeout
    arn = _arn(sqs, pair.dlq_url)
    while time.monotonic() < deadline:
        tasks = sqs.list_message_move_tasks(SourceArn=arn, MaxResults=1).get("Results", [])
        task = tasks[0] if tasks else {}
        status = task.get("Status")
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            moved = task.get("ApproximateNumberOfMessagesMoved", 0)
            print(f"{pair.name}: move task {status.lower()}, {moved} message(s) moved", file=out)
            return 0 if status == "COMPLETED" else 1
        time.sleep(2)
    print(f"{pair.name}: move task still running; check with `dlq list`", file=out)
    return 1


def move_messages(
    sqs: SQSClient, dlq_url: str, destination: str, *, settle_seconds: float = 5.0
) -> tuple[int, int]:
    """Receive/send/delete until the DLQ is empty; returns (moved, failed to send)."""
    moved = failed = 0
    quiet_since: float | None = None
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            visible, in_flight = depth(sqs, dlq_url)
            if visible:
                continue
            # Someone else may hold messages for a moment (a `dlq show`, the local sandbox page).
            quiet_since = quiet_since or time.monotonic()
            if not in_flight or time.monotonic() - quiet_since > settle_seconds:
                return moved, failed
            time.sleep(0.2)
            continue
        quiet_since = None
        entries = [
            {"Id": str(i), "MessageBody": m.get("Body", ""), "MessageAttributes": _forwarded(m)}
            for i, m in enumerate(messages)
        ]
        answer = sqs.send_message_batch(QueueUrl=destination, Entries=entries)  # type: ignore[arg-type]
        sent = {entry["Id"] for entry in answer.get("Successful", [])}
        failed += len(messages) - len(sent)
        done = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if str(i) in sent
        ]
        if done:
            sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)  # type: ignore[arg-type]
        moved += len(done)
        if not done:
            return moved, failed


def _forwarded(message: Mapping[str, Any]) -> dict[str, MessageAttributeValueTypeDef]:
    kept: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if name in REASON_ATTRIBUTES:
            continue
        item: dict[str, Any] = {"DataType": value.get("DataType", "String")}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                item[key] = value[key]
        kept[name] = item  # type: ignore[assignment]
    return kept


# ---- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stack", help="CloudFormation stack name (else the environment variables)")
    common.add_argument("--profile", help="AWS profile")
    common.add_argument("--region", help="AWS region")
    for name in QUEUES:
        common.add_argument(f"--{name}-queue-url", help=f"{name} queue URL (else {name.upper()}_QUEUE_URL)")
        common.add_argument(
            f"--{name}-dlq-url", help=f"{name} dead-letter queue URL (else {name.upper()}_DLQ_URL)"
        )

    root = argparse.ArgumentParser(prog="python -m cio_relay.ops", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("doctor", parents=[common], help="check credentials, region and reachability")
    check.add_argument("--check-url", help="also try this URL with the configured credentials")
    check.add_argument("--method", default="GET", type=str.upper, help="HTTP method for --check-url")
    check.add_argument("--data", help="JSON body for --check-url")
    check.add_argument(
        "--auth",
        choices=("auto", "pipelines", "app", "none"),
        default="auto",
        help="credentials for --check-url (auto: by host; never sent to an unknown host)",
    )
    dlq = commands.add_parser("dlq", help="dead-letter queues").add_subparsers(dest="action", required=True)
    dlq.add_parser("list", parents=[common], help="messages waiting in each dead-letter queue")
    show = dlq.add_parser("show", parents=[common], help="messages with their failure reasons")
    show.add_argument("queue", nargs="?", choices=tuple(QUEUES), help="events or email (default: both)")
    show.add_argument("--limit", type=int, default=10)
    show.add_argument("--bodies", action="store_true", help="print message bodies (may hold personal data)")
    show.add_argument("--max-chars", type=int, default=300, help="truncate bodies to this many characters")
    redrive = dlq.add_parser("redrive", parents=[common], help="move messages back to their source queue")
    redrive.add_argument("queue", choices=(*QUEUES, "all"))
    redrive.add_argument(
        "--no-move-task", action="store_true", help="receive/send/delete instead of SQS's task"
    )
    redrive.add_argument("--wait", action="store_true", help="wait for the SQS move task to finish")
    return root


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    aws: Aws | None = None,
) -> int:
    args = parser().parse_args(argv)
    stream = out or sys.stdout
    env = dict(os.environ if environ is None else environ)
    session = aws or Aws(args.profile, args.region)
    try:
        if args.command == "doctor":
            checks = doctor(
                session,
                targets(session, args.stack, env),
                check_url=args.check_url,
                method=args.method,
                data=args.data,
                auth=args.auth,
            )
            marks = _marks(stream)
            for check in checks:
                print(check.line(marks), file=stream)
            failed = sum(1 for c in checks if not c.ok)
            verdict = (
                f"{failed} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed"
            )
            print(f"doctor: {verdict}", file=stream)
            return 1 if failed else 0
        pairs = queue_pairs(args, session, env)
        if not pairs:
            print(
                "no dead-letter queue configured: pass --stack NAME, --events-dlq-url or set EVENTS_DLQ_URL",
                file=stream,
            )
            return 2
        sqs = session.sqs()
        if args.action == "list":
            return dlq_list(sqs, pairs, stream)
        chosen = (
            [pairs[args.queue]]
            if args.queue in pairs
            else list(pairs.values())
            if args.queue in (None, "all")
            else []
        )
        if not chosen:
            print(f"no {args.queue} dead-letter queue configured", file=stream)
            return 2
        codes = [
            dlq_show(sqs, pair, stream, limit=args.limit, bodies=args.bodies, max_chars=args.max_chars)
            if args.action == "show"
            else dlq_redrive(sqs, pair, stream, move_task=not args.no_move_task, wait=args.wait)
            for pair in chosen
        ]
        return max(codes)
    except AWS_ERRORS as exc:
        print(f"AWS error: {type(exc).__name__}: {exc}", file=stream)
        return 2


if __name__ == "__main__":
    sys.exit(main())
