"""Settings: defaults, blank variables, invalid values named, region hosts and URL overrides."""

from __future__ import annotations

import pytest
from cio_relay.errors import ConfigurationError
from cio_relay.settings import Settings, get_settings, load_settings


def test_settings_defaults_when_environment_is_empty() -> None:
    # GIVEN no variable at all
    # WHEN the settings are loaded
    settings = load_settings({})

    # THEN every documented default applies
    assert settings.secret_id is None
    assert settings.region == "us"
    assert settings.pipelines_url is None
    assert settings.app_url is None
    assert settings.connect_timeout == 3.05
    assert settings.read_timeout == 10.0
    assert settings.retry_base_seconds == 30
    assert settings.retry_cap_seconds == 3600
    assert settings.idempotency_ttl_seconds == 86_400
    assert settings.event_name_policy == "warn"
    assert settings.tracing_enabled is False
    assert settings.pipelines_base() == "https://cdp.customer.io"
    assert settings.app_base() == "https://api.customer.io"


@pytest.mark.parametrize(
    "name",
    [
        "CUSTOMERIO_SECRET_ID",
        "CUSTOMERIO_REGION",
        "CUSTOMERIO_PIPELINES_URL",
        "CUSTOMERIO_APP_URL",
        "CUSTOMERIO_TRACK_URL",
        "CUSTOMERIO_READ_TIMEOUT",
        "CUSTOMERIO_CONNECT_TIMEOUT",
        "RETRY_BASE_SECONDS",
        "RETRY_CAP_SECONDS",
        "EVENT_NAME_POLICY",
        "JOURNEYS_LIMITS_POLICY",
        "TRACING_ENABLED",
        "CUSTOMERIO_PIPELINES_API_KEY",
    ],
)
@pytest.mark.parametrize("blank", ["", "   "])
def test_settings_blank_variable_means_unset(name: str, blank: str) -> None:
    # GIVEN a variable CloudFormation had to set, but to an empty value
    # WHEN the settings are loaded
    settings = load_settings({name: blank})

    # THEN it is as if the variable were absent: the default applies, nothing fails
    assert settings == load_settings({})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CUSTOMERIO_REGION", "mars"),
        ("CUSTOMERIO_READ_TIMEOUT", "abc"),
        ("CUSTOMERIO_READ_TIMEOUT", "0"),
        ("CUSTOMERIO_READ_TIMEOUT", "500"),
        ("CUSTOMERIO_CONNECT_TIMEOUT", "-1"),
        ("RETRY_BASE_SECONDS", "-5"),
        ("RETRY_CAP_SECONDS", "86400"),
        ("IDEMPOTENCY_TTL_SECONDS", "10"),
        ("EVENT_NAME_POLICY", "loud"),
        ("TRACING_ENABLED", "maybe"),
    ],
)
def test_settings_invalid_value_names_the_variable(name: str, value: str) -> None:
    # GIVEN a variable with a value the relay cannot use
    # WHEN the settings are loaded
    with pytest.raises(ConfigurationError) as caught:
        load_settings({name: value})

    # THEN the error names the variable at fault
    assert name in str(caught.value)


@pytest.mark.parametrize("value", ["eu", "EU", " Eu "])
def test_settings_region_eu_from_environment(value: str) -> None:
    # GIVEN CUSTOMERIO_REGION=eu in any case
    settings = load_settings({"CUSTOMERIO_REGION": value})

    # WHEN the base URLs are computed
    # THEN both APIs use their EU hosts
    assert settings.region == "eu"
    assert settings.pipelines_base() == "https://cdp-eu.customer.io"
    assert settings.app_base() == "https://api-eu.customer.io"


@pytest.mark.parametrize(
    ("env_region", "secret_region", "pipelines", "app"),
    [
        ("us", "eu", "https://cdp-eu.customer.io", "https://api-eu.customer.io"),
        ("eu", "us", "https://cdp.customer.io", "https://api.customer.io"),
        ("eu", None, "https://cdp-eu.customer.io", "https://api-eu.customer.io"),
    ],
)
def test_settings_secret_region_wins_over_environment(
    env_region: str, secret_region: str | None, pipelines: str, app: str
) -> None:
    # GIVEN CUSTOMERIO_REGION and (maybe) a `region` read from the secret
    settings = load_settings({"CUSTOMERIO_REGION": env_region})

    # WHEN the clients compute their base URL with the secret's region
    # THEN the secret's region wins; without one the environment's applies
    assert settings.pipelines_base(secret_region) == pipelines
    assert settings.app_base(secret_region) == app


def test_settings_url_overrides_win_over_every_region() -> None:
    # GIVEN explicit base URLs (a local fake, a proxy), with a trailing slash
    settings = load_settings(
        {
            "CUSTOMERIO_REGION": "eu",
            "CUSTOMERIO_PIPELINES_URL": "http://127.0.0.1:8001/",
            "CUSTOMERIO_APP_URL": "http://127.0.0.1:8002",
        }
    )

    # WHEN the base URLs are computed, whatever the region
    # THEN the overrides are used, without the trailing slash
    for region in (None, "us", "eu"):
        assert settings.pipelines_base(region) == "http://127.0.0.1:8001"
        assert settings.app_base(region) == "http://127.0.0.1:8002"


def test_settings_require_names_the_missing_variable() -> None:
    # GIVEN no EVENTS_QUEUE_URL
    settings = load_settings({})

    # WHEN a code path needs it
    with pytest.raises(ConfigurationError) as caught:
        settings.require("events_queue_url")

    # THEN the error names the environment variable, not the attribute
    assert "EVENTS_QUEUE_URL" in str(caught.value)


def test_settings_require_returns_a_set_value() -> None:
    # GIVEN EVENTS_QUEUE_URL is set
    settings = load_settings({"EVENTS_QUEUE_URL": "http://127.0.0.1/q"})

    # WHEN / THEN require() hands it back
    assert settings.require("events_queue_url") == "http://127.0.0.1/q"


def test_settings_repr_never_shows_local_credentials() -> None:
    # GIVEN the local credential variables
    settings = load_settings(
        {
            "CUSTOMERIO_PIPELINES_API_KEY": "pk-secret-value",
            "CUSTOMERIO_SITE_ID": "site-secret-value",
            "CUSTOMERIO_TRACK_TOKEN": "track-secret-value",
            "CUSTOMERIO_APP_TOKEN": "app-secret-value",
        }
    )

    # WHEN the settings are printed (a log line, a traceback)
    text = repr(settings) + str(settings)

    # THEN no key value appears
    assert "secret-value" not in text
    assert settings.local_app_api_key == "app-secret-value"


def test_settings_get_settings_reads_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the container's settings were read with CUSTOMERIO_REGION=eu
    monkeypatch.setenv("CUSTOMERIO_REGION", "eu")
    first = get_settings()

    # WHEN the environment changes afterwards
    monkeypatch.setenv("CUSTOMERIO_REGION", "us")

    # THEN the same, already validated settings are returned
    assert get_settings() is first
    assert first.region == "eu"


def test_settings_is_frozen() -> None:
    # GIVEN loaded settings
    settings = load_settings({})

    # WHEN code tries to change one / THEN it cannot
    with pytest.raises(ValueError, match="frozen"):
        settings.region = "eu"  # type: ignore[misc]
    assert isinstance(settings, Settings)
