"""Credentials: the secret in (moto) Secrets Manager, cached, re-read after a 401; local env fallback."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from aws_lambda_powertools.utilities.parameters.secrets import SecretsProvider
from cio_relay.cio import CustomerIO, build_customerio
from cio_relay.credentials import Credentials, CredentialsProvider, _powertools_secret
from cio_relay.errors import AuthRejected, ConfigurationError
from cio_relay.settings import Settings, load_settings

from local_stack.customerio import FakeCustomerIO, Fault
from tests.support import REGION

OLD_PIPELINES, NEW_PIPELINES = "pk-old-3c1f9a", "pk-new-77d2e0"
OLD_APP, NEW_APP = "app-old-5b8c41", "app-new-e9a013"
SECRET_NAME = "cio-relay/customerio"
ALL_KEYS = (OLD_PIPELINES, NEW_PIPELINES, OLD_APP, NEW_APP, "site-9f1", "track-4a2")


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


@functools.cache
def secretsmanager() -> Any:
    return boto3.client("secretsmanager", region_name=REGION)


@pytest.fixture(autouse=True)
def _one_boto3_client(aws: None) -> None:
    """Powertools' default provider, fresh per test but on one shared boto3 client (a new one is slow)."""
    DEFAULT_PROVIDERS["secrets"] = SecretsProvider(boto3_client=secretsmanager())


class CountingReader:
    """The default Powertools reader, counting every read and whether it bypassed the cache."""

    def __init__(self) -> None:
        self.force_fetches: list[bool] = []

    def __call__(self, name: str, *, force_fetch: bool) -> Any:
        self.force_fetches.append(force_fetch)
        return _powertools_secret(name, force_fetch=force_fetch)


class Secret:
    """A Customer.io secret in moto's Secrets Manager, in docs/design.md's JSON format."""

    def __init__(self, value: dict[str, str] | str) -> None:
        self.client = secretsmanager()
        text = value if isinstance(value, str) else json.dumps(value)
        self.arn: str = self.client.create_secret(Name=SECRET_NAME, SecretString=text)["ARN"]

    def rotate(self, value: dict[str, str]) -> None:
        self.client.put_secret_value(SecretId=self.arn, SecretString=json.dumps(value))


@pytest.fixture
def fake(aws: None) -> Iterator[FakeCustomerIO]:
    with FakeCustomerIO(pipelines_api_key=OLD_PIPELINES, app_api_key=OLD_APP) as server:
        yield server


def settings_for(fake: FakeCustomerIO, secret_id: str | None = None, **env: str) -> Settings:
    environ = {**fake.environment(), **env}
    if secret_id:
        environ["CUSTOMERIO_SECRET_ID"] = secret_id
    return load_settings(environ)


def client_for(settings: Settings, reader: CountingReader) -> CustomerIO:
    return build_customerio(settings, reader)


TRACK = {"userId": "u1", "event": "paid", "messageId": "m-1"}


# --- reading and caching the secret -----------------------------------------------------------------


def test_credentials_secret_is_read_once_and_cached(fake: FakeCustomerIO) -> None:
    # GIVEN the secret in Secrets Manager and a client reading it through Powertools
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP, "region": "us"})
    reader = CountingReader()
    cio = client_for(settings_for(fake, secret.arn), reader)

    # WHEN several calls are made, and the secret changes in Secrets Manager in between
    cio.pipelines.track(TRACK)
    secret.rotate({"pipelines_api_key": NEW_PIPELINES, "app_api_key": NEW_APP})
    cio.pipelines.identify({"userId": "u1", "messageId": "m-2"})
    cio.app.list_segments()

    # THEN the secret was read once, and the cached keys kept being used
    assert reader.force_fetches == [False]
    assert [r.headers["authorization"] for r in fake.requests] == [
        basic(f"{OLD_PIPELINES}:"),
        basic(f"{OLD_PIPELINES}:"),
        f"Bearer {OLD_APP}",
    ]


def test_credentials_powertools_cache_is_shared_and_refresh_bypasses_it(aws: None) -> None:
    # GIVEN a secret read once, then changed in Secrets Manager
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP})
    settings = load_settings({"CUSTOMERIO_SECRET_ID": secret.arn})
    CredentialsProvider(settings).get()
    secret.rotate({"pipelines_api_key": NEW_PIPELINES, "app_api_key": NEW_APP})

    # WHEN another provider reads it normally, then forces a re-read
    provider = CredentialsProvider(settings)
    cached = provider.get()
    refreshed = provider.refresh()

    # THEN the normal read is served from the Powertools cache (no new GetSecretValue) ...
    assert cached.pipelines_api_key == OLD_PIPELINES
    # ... and refresh() fetches the new value, which get() then returns
    assert refreshed.pipelines_api_key == NEW_PIPELINES
    assert provider.get() is refreshed


def test_credentials_secret_values_are_trimmed_and_region_read(aws: None) -> None:
    secret = Secret({"pipelines_api_key": f" {OLD_PIPELINES}\n", "app_api_key": OLD_APP, "region": " EU "})
    credentials = CredentialsProvider(load_settings({"CUSTOMERIO_SECRET_ID": secret.arn})).get()
    assert credentials.pipelines_api_key == OLD_PIPELINES
    assert credentials.region == "eu"
    assert credentials.source == f"secret {secret.arn}"


def test_credentials_secret_region_wins_over_environment(aws: None) -> None:
    # GIVEN CUSTOMERIO_REGION=us and a secret that says eu
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP, "region": "eu"})
    settings = load_settings({"CUSTOMERIO_SECRET_ID": secret.arn, "CUSTOMERIO_REGION": "us"})

    # WHEN the clients compute their hosts from the credentials
    credentials = CredentialsProvider(settings).get()

    # THEN the EU hosts are used
    assert settings.pipelines_base(credentials.region) == "https://cdp-eu.customer.io"
    assert settings.app_base(credentials.region) == "https://api-eu.customer.io"


def test_credentials_secret_region_with_url_override_reaches_the_override(fake: FakeCustomerIO) -> None:
    # GIVEN a secret with region eu, and URL overrides pointing at the local fake
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP, "region": "eu"})
    cio = client_for(settings_for(fake, secret.arn), CountingReader())

    # WHEN calls are made / THEN they reach the override
    cio.pipelines.track(TRACK)
    cio.app.list_segments()
    assert [r.status for r in fake.requests] == [200, 200]


# --- the re-read after a 401 --------------------------------------------------------------------------


def test_credentials_401_after_rotation_rereads_secret_and_retries_once(fake: FakeCustomerIO) -> None:
    # GIVEN a client that has cached the old keys
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP})
    reader = CountingReader()
    cio = client_for(settings_for(fake, secret.arn), reader)
    cio.pipelines.track(TRACK)
    # AND the keys were then rotated: in the secret, and at Customer.io
    secret.rotate({"pipelines_api_key": NEW_PIPELINES, "app_api_key": NEW_APP})
    fake.pipelines_api_key, fake.app_api_key = NEW_PIPELINES, NEW_APP

    # WHEN the next Pipelines call is made
    cio.pipelines.track({**TRACK, "messageId": "m-2"})

    # THEN the old key got a 401, the secret was re-read bypassing the cache, and the retry succeeded
    assert [(r.status, r.headers["authorization"]) for r in fake.requests] == [
        (200, basic(f"{OLD_PIPELINES}:")),
        (401, basic(f"{OLD_PIPELINES}:")),
        (200, basic(f"{NEW_PIPELINES}:")),
    ]
    assert reader.force_fetches == [False, True]
    # AND the same request body was sent again
    assert fake.requests[1].body == fake.requests[2].body

    # WHEN the App API is called next
    cio.app.list_segments()

    # THEN it already uses the new App key (one secret, one re-read)
    assert fake.requests[-1].headers["authorization"] == f"Bearer {NEW_APP}"
    assert fake.requests[-1].status == 200
    assert reader.force_fetches == [False, True]


def test_credentials_app_401_after_rotation_rereads_secret(fake: FakeCustomerIO) -> None:
    # GIVEN cached old keys, then a rotated App key
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP})
    reader = CountingReader()
    cio = client_for(settings_for(fake, secret.arn), reader)
    cio.app.list_segments()
    secret.rotate({"pipelines_api_key": OLD_PIPELINES, "app_api_key": NEW_APP})
    fake.app_api_key = NEW_APP

    # WHEN an email is sent
    result = cio.app.send_email(
        {"transactional_message_id": 1, "to": "a@example.com", "identifiers": {"id": "1"}}
    )

    # THEN it succeeded with the new Bearer key after one 401 and one forced re-read
    assert result.delivery_id == fake.emails[0]["delivery_id"]
    assert [r.status for r in fake.requests] == [200, 401, 200]
    assert fake.requests[-1].headers["authorization"] == f"Bearer {NEW_APP}"
    assert reader.force_fetches == [False, True]
    assert len(fake.emails) == 1


def test_credentials_403_also_triggers_one_reread(fake: FakeCustomerIO) -> None:
    # GIVEN Customer.io answers 403 once (keys unchanged)
    secret = Secret({"pipelines_api_key": OLD_PIPELINES, "app_api_key": OLD_APP})
    reader = CountingReader()
    cio = client_for(settings_for(fake, secret.arn), reader)
    fake.fail("/v1/track", Fault(status=403))

    # WHEN a call is made / THEN it is re-read and retried at once, and succeeds
    cio.pipelines.track(TRACK)
    assert [r.status for r in fake.requests] == [403, 200]
    assert reader.force_fetches == [False, True]


def test_credentials_second_401_is_auth_rejected(fake: FakeCustomerIO) -> None:
    # GIVEN a secret whose key Customer.io does not accept, even after a re-read
    secret = Secret({"pipelines_api_key": NEW_PIPELINES, "app_api_key": OLD_APP})
    reader = CountingReader()
    cio = client_for(settings_for(fake, secret.arn), reader)

    # WHEN a call is made
    with pytest.raises(AuthRejected) as caught:
        cio.pipelines.track(TRACK)

    # THEN the client re-read once and tried once more, then gave up with AuthRejected
    assert caught.value.status == 401
    assert "Unauthorized request" in str(caught.value)
    assert [r.status for r in fake.requests] == [401, 401]
    assert reader.force_fetches == [False, True]
    # AND the key is in no part of the error
    assert NEW_PIPELINES not in f"{caught.value!s} {caught.value!r}"


# --- missing and broken credentials ---------------------------------------------------------------


def test_credentials_secret_without_pipelines_key_names_key_and_secret(fake: FakeCustomerIO) -> None:
    # GIVEN a secret with only the App key
    secret = Secret({"app_api_key": OLD_APP})
    cio = client_for(settings_for(fake, secret.arn), CountingReader())

    # WHEN EventsFunction picks the API for identities and events
    with pytest.raises(ConfigurationError) as caught:
        cio.events_backend()

    # THEN the error says which keys are missing and where they were looked for; nothing was sent
    message = str(caught.value)
    assert "pipelines_api_key" in message
    assert "site_id" in message
    assert "track_api_key" in message
    assert secret.arn in message
    assert OLD_APP not in message
    assert fake.requests == []


def test_credentials_secret_with_half_the_site_pair_is_missing_a_key(fake: FakeCustomerIO) -> None:
    secret = Secret({"site_id": "site-9f1", "app_api_key": OLD_APP})
    cio = client_for(settings_for(fake, secret.arn), CountingReader())
    with pytest.raises(ConfigurationError, match="track_api_key"):
        cio.events_backend()
    assert fake.requests == []


def test_credentials_secret_without_app_key_names_key_and_secret(fake: FakeCustomerIO) -> None:
    # GIVEN a secret with only the Pipelines key
    secret = Secret({"pipelines_api_key": OLD_PIPELINES})
    cio = client_for(settings_for(fake, secret.arn), CountingReader())

    # WHEN an App call is made
    with pytest.raises(ConfigurationError) as caught:
        cio.app.list_segments()

    # THEN the error names app_api_key and the secret; nothing was sent
    assert "app_api_key" in str(caught.value)
    assert SECRET_NAME in str(caught.value)
    assert OLD_PIPELINES not in str(caught.value)
    assert fake.requests == []


def test_credentials_site_id_pair_from_the_secret_selects_the_track_api(fake: FakeCustomerIO) -> None:
    # GIVEN a secret with site_id + track_api_key and no Pipelines key
    secret = Secret({"site_id": "site-9f1", "track_api_key": "track-4a2", "app_api_key": OLD_APP})
    cio = client_for(settings_for(fake, secret.arn), CountingReader())

    # WHEN / THEN identities and events go to the Track API, with Basic site_id:track_api_key
    assert cio.events_backend() is cio.track
    assert cio.credentials.get().track_authorization() == basic("site-9f1:track-4a2")


def test_credentials_missing_secret_names_the_secret(fake: FakeCustomerIO) -> None:
    # GIVEN CUSTOMERIO_SECRET_ID names a secret that does not exist
    cio = client_for(settings_for(fake, "cio-relay/nope"), CountingReader())

    # WHEN a call is made
    with pytest.raises(ConfigurationError) as caught:
        cio.pipelines.track(TRACK)

    # THEN the error names the secret it could not read; nothing was sent
    assert "cio-relay/nope" in str(caught.value)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (OLD_PIPELINES, "cannot read secret"),  # the raw key stored instead of JSON
        (json.dumps([OLD_PIPELINES]), "must hold a JSON object"),
        (json.dumps({"pipelines_api_key": OLD_PIPELINES, "region": "mars"}), "region must be 'us' or 'eu'"),
    ],
)
def test_credentials_malformed_secret_is_a_configuration_error_without_its_value(
    fake: FakeCustomerIO, value: str, expected: str
) -> None:
    # GIVEN a secret that is not docs/design.md's JSON object
    secret = Secret(value)
    cio = client_for(settings_for(fake, secret.arn), CountingReader())

    # WHEN a call is made
    with pytest.raises(ConfigurationError) as caught:
        cio.pipelines.track(TRACK)

    # THEN the error says what is wrong with which secret, never what it holds
    assert expected in str(caught.value)
    assert secret.arn in str(caught.value)
    assert OLD_PIPELINES not in str(caught.value)
    assert fake.requests == []


# --- local environment fallback ------------------------------------------------------------------------


def test_credentials_local_environment_when_no_secret(fake: FakeCustomerIO) -> None:
    # GIVEN no CUSTOMERIO_SECRET_ID, but the local credential variables
    reader = CountingReader()
    settings = settings_for(
        fake, CUSTOMERIO_PIPELINES_API_KEY=OLD_PIPELINES, CUSTOMERIO_APP_TOKEN=OLD_APP, CUSTOMERIO_REGION="eu"
    )
    cio = client_for(settings, reader)

    # WHEN calls are made
    cio.pipelines.track(TRACK)
    cio.app.list_segments()

    # THEN those keys are used and Secrets Manager is never read
    assert [r.headers["authorization"] for r in fake.requests] == [
        basic(f"{OLD_PIPELINES}:"),
        f"Bearer {OLD_APP}",
    ]
    assert reader.force_fetches == []
    assert cio.credentials.get().region is None  # CUSTOMERIO_REGION applies


def test_credentials_local_site_id_pair(fake: FakeCustomerIO) -> None:
    settings = settings_for(fake, CUSTOMERIO_SITE_ID="site-9f1", CUSTOMERIO_TRACK_TOKEN="track-4a2")
    cio = client_for(settings, CountingReader())
    assert cio.events_backend() is cio.track
    assert cio.credentials.get().track_authorization() == basic("site-9f1:track-4a2")


@pytest.mark.parametrize(
    ("operation", "variable"),
    [("pipelines", "CUSTOMERIO_PIPELINES_API_KEY"), ("app", "CUSTOMERIO_APP_TOKEN")],
)
def test_credentials_local_environment_missing_names_the_variables(
    fake: FakeCustomerIO, operation: str, variable: str
) -> None:
    # GIVEN neither a secret nor local credentials
    cio = client_for(settings_for(fake), CountingReader())

    call: Callable[[], object] = (
        (lambda: cio.pipelines.track(TRACK)) if operation == "pipelines" else cio.app.list_segments
    )

    # WHEN a call is made
    with pytest.raises(ConfigurationError) as caught:
        call()

    # THEN the error names the variables it looked at; nothing was sent
    assert variable in str(caught.value)
    assert "CUSTOMERIO_SECRET_ID" in str(caught.value)
    assert fake.requests == []


def test_credentials_local_401_is_auth_rejected_after_one_retry(fake: FakeCustomerIO) -> None:
    # GIVEN local keys Customer.io refuses
    reader = CountingReader()
    cio = client_for(settings_for(fake, CUSTOMERIO_APP_TOKEN="app-wrong"), reader)

    # WHEN / THEN one retry (env re-read), then AuthRejected
    with pytest.raises(AuthRejected):
        cio.app.list_segments()
    assert [r.status for r in fake.requests] == [401, 401]


# --- secrets never leak -------------------------------------------------------------------------------


def test_credentials_repr_never_shows_key_values() -> None:
    # GIVEN credentials holding every kind of key
    credentials = Credentials(
        source="secret x",
        pipelines_api_key=OLD_PIPELINES,
        app_api_key=OLD_APP,
        site_id="site-9f1",
        track_api_key="track-4a2",
        region="eu",
    )

    # WHEN they are printed / THEN no value shows, the source and region do
    text = f"{credentials!r} {credentials!s}"
    assert not [key for key in ALL_KEYS if key in text]
    assert "secret x" in text
    assert "eu" in text


def test_credentials_authorization_headers() -> None:
    both = Credentials(source="s", pipelines_api_key="pk", site_id="s1", track_api_key="t1", app_api_key="ak")
    pair = Credentials(source="s", site_id="s1", track_api_key="t1")
    assert both.pipelines_authorization() == basic("pk:")
    assert both.events_backend == "pipelines"  # both credentials: Pipelines wins
    assert pair.events_backend == "track"
    assert pair.track_authorization() == basic("s1:t1")
    with pytest.raises(ConfigurationError, match="pipelines_api_key"):
        pair.pipelines_authorization()  # the Pipelines API takes no Track credential
    assert both.app_authorization() == "Bearer ak"
