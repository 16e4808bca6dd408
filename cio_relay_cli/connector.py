"""`cio-relay doctor check-connector`: one credential, or one Customer.io URL, explained and probed.

`--env-name NAME` says which credential NAME is, what the relay uses it for, where this configuration
keeps it, and whether Customer.io accepts it. `--url URL --method M` says which API, region and
credential a call needs, and probes it with a harmless request: one that Customer.io checks the
credential of and then refuses or only reads, so nothing is created, changed or sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from cio_relay.cio.transport import Response, Transport
from cio_relay.credentials import Credentials
from cio_relay.errors import AuthRejected, ConfigurationError, CustomerIOError, Permanent
from cio_relay.settings import APP_HOSTS, PIPELINES_HOSTS, TRACK_HOSTS, Settings, load_settings

from cio_relay_cli.aws import Aws, Target
from cio_relay_cli.doctor import (
    APP_KEY_HELP,
    PIPELINES_KEY_HELP,
    Secret,
    _credentials,
    answer_meaning,
    read_secret,
)
from cio_relay_cli.output import Check, _ms, _safe_url

TRACK_KEY_HELP = "a Track API key and its Site ID (Customer.io: Settings > API credentials > Track API keys)"


class Sender(Protocol):
    """What the probes need of cio_relay's Transport."""

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        retry_dropped: bool = True,
    ) -> Response: ...


@dataclass(frozen=True)
class Api:
    """One of the three Customer.io APIs the relay calls."""

    name: str
    hosts: Mapping[str, str]
    label: str  # its credential, short
    credential: str  # what it needs, in words
    auth: str  # how it is sent
    probe: tuple[str, str, bytes | None]  # the API's own harmless request: method, path, body


PIPELINES = Api(
    "Pipelines API (Data Pipelines)",
    PIPELINES_HOSTS,
    "the Pipelines key",
    "the Pipelines key (secret key pipelines_api_key, locally CUSTOMERIO_PIPELINES_API_KEY)",
    'HTTP Basic base64("<key>:"), with X-Strict-Mode: 1 so that an invalid call is refused, not dropped',
    ("POST", "/v1/batch", b'{"batch":[]}'),
)
TRACK = Api(
    "Track API",
    TRACK_HOSTS,
    "the Track API credentials",
    "the Site ID and Track API key (secret keys site_id and track_api_key, locally CUSTOMERIO_SITE_ID "
    "and CUSTOMERIO_TRACK_TOKEN)",
    'HTTP Basic base64("<site_id>:<track api key>")',
    ("GET", "/api/v1/accounts/region", None),
)
APP = Api(
    "App API",
    APP_HOSTS,
    "the App API key",
    "the App API key (secret key app_api_key, locally CUSTOMERIO_APP_TOKEN)",
    "Authorization: Bearer <key>",
    ("GET", "/v1/segments", None),
)


@dataclass(frozen=True)
class Credential:
    """A credential the relay reads: its variable, its key in the secret, its API and its job."""

    variable: str
    key: str
    api: Api
    what: str
    used_for: str
    where: str


CREDENTIALS = {
    c.variable: c
    for c in (
        Credential(
            "CUSTOMERIO_PIPELINES_API_KEY",
            "pipelines_api_key",
            PIPELINES,
            "the Pipelines key: the API key of a Data Pipelines HTTP source",
            "EventsFunction sends identify, track, page, screen, group, alias and batch calls, and person "
            "deletes (the User Deleted event), to the Pipelines API with it; when it is set it wins over "
            "Track credentials",
            PIPELINES_KEY_HELP,
        ),
        Credential(
            "CUSTOMERIO_SITE_ID",
            "site_id",
            TRACK,
            "the Site ID that goes with a Track API key (the user name of the Track API's Basic auth)",
            "with the Track API key, EventsFunction sends identities, events and person deletes to the "
            "Track API, only when there is no Pipelines key",
            TRACK_KEY_HELP,
        ),
        Credential(
            "CUSTOMERIO_TRACK_TOKEN",
            "track_api_key",
            TRACK,
            "a Track API key (the password of the Track API's Basic auth, with the Site ID)",
            "with the Site ID, EventsFunction sends identities, events and person deletes to the Track "
            "API, only when there is no Pipelines key",
            TRACK_KEY_HELP,
        ),
        Credential(
            "CUSTOMERIO_APP_TOKEN",
            "app_api_key",
            APP,
            "an App API key",
            "EmailFunction sends transactional email, push and SMS with it, and EventsFunction answers "
            "people search and segments",
            APP_KEY_HELP,
        ),
    )
}
BY_SECRET_KEY = {c.key: c for c in CREDENTIALS.values()}
NOT_CREDENTIALS = {
    "CUSTOMERIO_SECRET_ID": "it names the Secrets Manager secret that holds the credentials",
    "CUSTOMERIO_REGION": "it is the workspace's data center, us or eu (a region key in the secret wins)",
    "CUSTOMERIO_PIPELINES_URL": "it overrides the Pipelines API's base URL (a proxy, a local sandbox)",
    "CUSTOMERIO_APP_URL": "it overrides the App API's base URL (a proxy, a local sandbox)",
    "CUSTOMERIO_TRACK_URL": "it overrides the Track API's base URL (a proxy, a local sandbox)",
}
# Calls that are safe to make as they are (they only read), or with an empty body Customer.io refuses
# after it has checked the credential.
READS = {("GET", "/v1/segments"), ("GET", "/api/v1/accounts/region")}
EMPTY_REFUSED: dict[tuple[str, str], bytes] = {
    **{("POST", f"/v1/{name}"): b"{}" for name in ("identify", "track", "page", "screen", "group", "alias")},
    ("POST", "/v1/batch"): b'{"batch":[]}',
    **{("POST", f"/v1/send/{channel}"): b"{}" for channel in ("email", "push", "sms")},
    ("POST", "/v1/customers"): b"{}",
    ("POST", "/api/v2/batch"): b'{"batch":[]}',
    ("POST", "/api/v2/entity"): b"{}",
}


@dataclass
class Report:
    """What check-connector prints: plain lines that explain, and checks that pass or fail."""

    lines: list[str | Check]

    @property
    def failed(self) -> int:
        return sum(1 for line in self.lines if isinstance(line, Check) and not line.ok)

    @property
    def checks(self) -> int:
        return sum(1 for line in self.lines if isinstance(line, Check))


def _value(credential: Credential, secret: Secret) -> str | None:
    value = (secret.data or {}).get(credential.key)
    return str(value) if value not in (None, "") else None


def _missing(credential: Credential, secret: Secret) -> Check:
    where = (
        f'add "{credential.key}" to {secret.source}'
        if secret.source.startswith("secret")
        else f"set {credential.variable}"
    )
    return Check(
        False, f"{credential.variable} is not set in {secret.source}", f"{where}: {credential.where}"
    )


def _authorization(api: Api, credentials: Credentials) -> dict[str, str]:
    if api is PIPELINES:
        return {"Authorization": credentials.pipelines_authorization(), "X-Strict-Mode": "1"}
    if api is TRACK:
        return {"Authorization": credentials.track_authorization()}
    return {"Authorization": credentials.app_authorization()}


def _base(api: Api, settings: Settings, region: str) -> str:
    if api is PIPELINES:
        return settings.pipelines_base(region)
    if api is TRACK:
        return settings.track_base(region)
    return settings.app_base(region)


def probe(
    sender: Sender,
    api: Api,
    credentials: Credentials,
    *,
    url: str,
    method: str,
    body: bytes | None,
    settings: Settings,
    label: str,
) -> list[str | Check]:
    """Send one harmless request and say whether Customer.io accepted the credential."""
    shown = f"{method} {_safe_url(url)}"
    try:
        headers = _authorization(api, credentials)
    except ConfigurationError as exc:
        return [Check(False, f"{label}: {exc.message}", "add the missing credential, then try again")]
    started = time.perf_counter()
    try:
        response = sender.request(
            method, url, what=f"{method} {urlsplit(url).path}", headers=headers, body=body
        )
    except CustomerIOError as exc:
        took = f"{exc.status} in {_ms(time.perf_counter() - started)}"
        answer = f"{shown}: {took}"
        return [
            _refusal(
                exc,
                api=api,
                url=url,
                body=body,
                answer=answer,
                label=label,
                settings=settings,
                started=started,
            )
        ]
    lines: list[str | Check] = [
        Check(
            True,
            f"{label} accepted by Customer.io ({shown}: {response.status} in {_ms(response.elapsed)})",
        )
    ]
    region = _answered_region(response)
    wanted = credentials.region or settings.region
    if region and region != wanted:
        lines.append(
            Check(
                False,
                f"Customer.io says this workspace is in region {region}, the relay is set to {wanted}",
                f'set "region": "{region}" in the secret (CustomerIoRegion={region})',
            )
        )
    elif region:
        lines.append(Check(True, f"Customer.io says this workspace is in region {region}, as configured"))
    return lines


def _refusal(
    exc: CustomerIOError,
    *,
    api: Api,
    url: str,
    body: bytes | None,
    answer: str,
    label: str,
    settings: Settings,
    started: float,
) -> Check:
    """What an error answer to a probe says about the credential."""
    # The Track API's region endpoint answers 400 "Your credentials are not valid" (its spec).
    invalid = api is TRACK and urlsplit(url).path == TRACK.probe[1] and exc.status == 400
    if isinstance(exc, AuthRejected) or invalid:
        why = ": the credentials are not valid" if invalid else ""
        return Check(
            False,
            f"{label} rejected by Customer.io ({answer}{why})",
            f"use {api.credential} of this workspace and region",
        )
    if isinstance(exc, Permanent) and exc.status in (400, 422) and body is not None:
        return Check(
            True,
            f"{label} accepted by Customer.io ({answer} to {body.decode()}: it checked the credential, "
            "then refused the empty request as expected; nothing was created or sent)",
        )
    return answer_meaning(exc, f"{_safe_url(url)}: ", time.perf_counter() - started, label, settings)


def _answered_region(response: Response) -> str | None:
    try:
        data: Any = response.json()
    except ValueError:
        return None
    # GET /api/v1/accounts/region answers {"url", "data_center", "environment_id"}.
    region = (data.get("data_center") or data.get("region")) if isinstance(data, dict) else None
    return str(region).lower() if isinstance(region, str) and region.lower() in ("us", "eu") else None


def explain_credential(
    name: str, settings: Settings, secret: Secret, credentials: Credentials | None, sender: Sender
) -> Report:
    """`--env-name NAME`: which credential, what it is for, where it is, whether Customer.io takes it."""
    credential = CREDENTIALS.get(name) or BY_SECRET_KEY.get(name)
    if credential is None:
        if name in NOT_CREDENTIALS:
            return Report([f"{name} is not a credential: {NOT_CREDENTIALS[name]}."])
        known = ", ".join(CREDENTIALS)
        return Report([Check(False, f"{name} is not a variable cio-relay reads", f"one of {known}")])
    api = credential.api
    hosts = " / ".join(urlsplit(h).hostname or h for h in api.hosts.values())
    lines: list[str | Check] = [
        f"{credential.variable} (secret key {credential.key}) is {credential.what}.",
        f"What for: {credential.used_for}.",
        f"It goes to the {api.name} at {hosts} as {api.auth}.",
        secret.check,
    ]
    if secret.data is None:
        return Report(lines)
    if _value(credential, secret) is None:
        if api is TRACK and (secret.data or {}).get("pipelines_api_key"):
            lines.append(
                Check(
                    True,
                    f"{credential.variable} is not set in {secret.source}, and not needed: the relay uses "
                    "the Pipelines key (pipelines_api_key) that is set there",
                )
            )
        else:
            lines.append(_missing(credential, secret))
        return Report(lines)
    lines.append(Check(True, f"{credential.variable} is set in {secret.source} (value not shown)"))
    if credentials is None:
        return Report(lines)
    if api is TRACK and credentials.pipelines_api_key:
        lines.append("Note: a Pipelines key is configured as well, so the relay does not use the Track API.")
    region = credentials.region or settings.region
    method, path, body = api.probe
    url = _base(api, settings, region) + path
    lines += probe(
        sender,
        api,
        credentials,
        url=url,
        method=method,
        body=body,
        settings=settings,
        label=credential.variable,
    )
    return Report(lines)


APP_PATHS = ("/v1/send/", "/v1/customers", "/v1/segments")


def classify(url: str, settings: Settings) -> tuple[Api, str | None, bool] | None:
    """The API a URL belongs to, its region (None for a custom URL) and whether it is a configured
    custom base URL; None when the URL is no Customer.io API the relay knows."""
    host = (urlsplit(url).hostname or "").lower()
    for api in (PIPELINES, TRACK, APP):
        for region, base in api.hosts.items():
            if urlsplit(base).hostname == host:
                return api, region, False
    configured = ((PIPELINES, settings.pipelines_url), (TRACK, settings.track_url), (APP, settings.app_url))
    customs = [api for api, base in configured if base and _same_origin(url, base)]
    if not customs:
        return None
    # One custom host may serve all three APIs (a proxy, the local sandbox): go by the path.
    path = urlsplit(url).path
    by_path = TRACK if path.startswith("/api/") else APP if path.startswith(APP_PATHS) else PIPELINES
    return (by_path if by_path in customs else customs[0]), None, True


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def explain_url(
    url: str,
    method: str,
    settings: Settings,
    secret: Secret,
    credentials: Credentials | None,
    *,
    sender: Sender,
) -> Report:
    """`--url URL --method M`: which API, region and credential the call needs, probed harmlessly."""
    shown = f"{method} {_safe_url(url)}"
    found = classify(url, settings)
    if found is None:
        hosts = ", ".join(
            urlsplit(h).hostname or h for api in (PIPELINES, TRACK, APP) for h in api.hosts.values()
        )
        return Report(
            [
                Check(
                    False,
                    f"{shown}: not a Customer.io API the relay calls (nothing was sent)",
                    f"use one of {hosts}, or the base URL configured in CUSTOMERIO_*_URL",
                )
            ]
        )
    api, host_region, custom = found
    where = "a configured custom base URL" if custom else f"region {host_region}"
    lines: list[str | Check] = [
        f"{shown} is the {api.name}, {where}.",
        f"It needs {api.credential}, sent as {api.auth}.",
        secret.check,
    ]
    if secret.data is None or credentials is None:
        return Report(lines)
    configured = credentials.region or settings.region
    if host_region and host_region != configured:
        right = urlsplit(api.hosts[configured]).hostname
        lines.append(
            Check(
                False,
                f"the host is in region {host_region}, this configuration's workspace is in {configured}",
                f"call {right}, or set the region to {host_region} if the workspace is there",
            )
        )
    elif host_region:
        lines.append(Check(True, f"region {host_region} matches this configuration"))
    needed = [c for c in CREDENTIALS.values() if c.api is api]
    missing = [c for c in needed if _value(c, secret) is None]
    if missing:
        lines += [_missing(c, secret) for c in missing]
        if api is PIPELINES and credentials.site_id and credentials.track_api_key:
            lines.append(
                "Note: this configuration has Track credentials, which the Pipelines API does not take; "
                "the relay sends identities and events to the Track API instead."
            )
        return Report(lines)
    path = urlsplit(url).path
    if (method, path) in READS or method in ("GET", "HEAD"):
        probe_url, probe_method, probe_body = url, method, None
    elif (method, path) in EMPTY_REFUSED:
        probe_url, probe_method, probe_body = url, method, EMPTY_REFUSED[(method, path)]
    else:
        probe_method, probe_path, probe_body = api.probe
        parts = urlsplit(url)
        base = (
            f"{parts.scheme}://{parts.netloc}" if custom else _base(api, settings, host_region or configured)
        )
        lines.append(
            f"Not called: {shown} could change data; probing the credential with {probe_method} "
            f"{probe_path} instead."
        )
        probe_url = base.rstrip("/") + probe_path
    lines += probe(
        sender,
        api,
        credentials,
        url=probe_url,
        method=probe_method,
        body=probe_body,
        settings=settings,
        label=api.label,
    )
    return Report(lines)


def print_report(report: Report, marks: tuple[str, str], write: Callable[[str], None]) -> int:
    for line in report.lines:
        write(line.line(marks) if isinstance(line, Check) else f"  {line}")
    if report.checks:
        verdict = (
            f"{report.failed} of {report.checks} checks failed"
            if report.failed
            else f"all {report.checks} checks passed"
        )
        write(f"check-connector: {verdict}")
    return 1 if report.failed else 0


def check_connector(
    aws: Aws,
    target_list: Sequence[Target],
    *,
    env_name: str | None,
    url: str | None,
    method: str,
    sender_for: Callable[[Settings], Sender] | None = None,
) -> Report:
    """Load the configuration the relay runs with (the first function's), then explain and probe."""
    if not target_list:
        return Report([Check(False, "no function found", "check --stack (the CloudFormation stack name)")])
    try:
        settings = load_settings(target_list[0].env)
    except ConfigurationError as exc:
        return Report([Check(False, f"configuration: {exc.message}", "fix it, then try again")])
    secret = read_secret(aws, settings)
    credentials: Credentials | None = None
    if secret.data is not None:
        try:
            credentials = _credentials(settings, secret)
        except ConfigurationError as exc:
            return Report([secret.check, Check(False, exc.message, 'set "region" to "us" or "eu"')])
    sender = (sender_for or _transport)(settings)
    if env_name:
        return explain_credential(env_name, settings, secret, credentials, sender)
    return explain_url(url or "", method, settings, secret, credentials, sender=sender)


def _transport(settings: Settings) -> Sender:
    return Transport(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
