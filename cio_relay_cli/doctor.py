"""`cio-relay doctor`: credentials, region and reachability of each function's configuration."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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

from cio_relay_cli.aws import NEEDS, Aws, Target
from cio_relay_cli.output import Check, _ms, _safe_url

PIPELINES_PATHS = frozenset(
    f"/v1/{name}" for name in ("identify", "track", "page", "screen", "group", "alias", "batch")
)
SECRET_SHAPE = '{"pipelines_api_key": "...", "app_api_key": "...", "region": "us"}'  # noqa: S105
PIPELINES_KEY_HELP = (
    "the API key of your Data Pipelines HTTP source (Customer.io: Data Pipelines > Sources > "
    "your HTTP API source > API key)"
)
APP_KEY_HELP = "an App API key (Customer.io: Settings > API credentials > App API keys)"


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
            ignored = "; site_id + track_api_key unused" if data.get("track_api_key") else ""
            have.append(
                f"Pipelines key (pipelines_api_key: identities and events go to the Pipelines API{ignored})"
            )
        elif data.get("site_id") and data.get("track_api_key"):
            have.append(
                "Track API credentials (site_id + track_api_key and no pipelines_api_key: "
                "identities and events go to the Track API)"
            )
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
    return _empty_batch_check(
        transport,
        settings.pipelines_base(credentials.region),
        "/v1/batch",
        authorization=credentials.pipelines_authorization,
        extra_headers={"X-Strict-Mode": "1"},
        credential="Pipelines key",
        api="Pipelines API",
        empty="an empty strict-mode batch",
        rejected_help=f"put {PIPELINES_KEY_HELP} in pipelines_api_key (a Track API key is not one); "
        "an EU workspace needs region eu",
    )


def track_key_check(transport: Transport, settings: Settings, credentials: Credentials) -> Check:
    """POST /api/v2/batch with an empty batch: Customer.io checks the credentials first (401 when
    rejected), then refuses the empty batch (400), so a 400 proves them without creating any data."""
    return _empty_batch_check(
        transport,
        settings.track_base(credentials.region),
        "/api/v2/batch",
        authorization=credentials.track_authorization,
        extra_headers={},
        credential="Track API credentials",
        api="Track API",
        empty="an empty batch",
        rejected_help="put the Site ID and API key of Settings > API credentials > Track API keys in site_id "
        "and track_api_key (or a Pipelines key in pipelines_api_key); an EU workspace needs region eu",
    )


def _empty_batch_check(
    transport: Transport,
    base: str,
    path: str,
    *,
    authorization: Callable[[], str],
    extra_headers: Mapping[str, str],
    credential: str,
    api: str,
    empty: str,
    rejected_help: str,
) -> Check:
    """POST an empty batch to `base + path`: 401 is the credential rejected, 400 (or a 2xx) accepted."""
    host = urlsplit(base).hostname
    started = time.perf_counter()
    try:
        response = transport.request(
            "POST",
            f"{base}{path}",
            what=f"POST {path}",
            headers={"Authorization": authorization(), **extra_headers},
            body=b'{"batch":[]}',
        )
    except AuthRejected as exc:
        return Check(
            False,
            f"{credential} rejected by {host} ({exc.status}, {_ms(time.perf_counter() - started)})",
            rejected_help,
        )
    except Permanent as exc:
        if exc.status == 400:
            return Check(
                True,
                f"{credential} accepted (POST {host}{path} with {empty}: 400 as "
                f"expected, nothing created, {_ms(time.perf_counter() - started)})",
            )
        return _unreachable(api, host, exc)
    except CustomerIOError as exc:
        return _unreachable(api, host, exc)
    return Check(
        True,
        f"{credential} accepted (POST {host}{path} with an empty batch: {response.status}, "
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
        if kind == "pipelines" and not credentials.pipelines_api_key:  # Track credentials (or none)
            kind, probe, base = "track", track_key_check, settings.track_base
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
