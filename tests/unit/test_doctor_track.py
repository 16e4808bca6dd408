"""`cio-relay doctor` with Track API credentials: which API EventsFunction uses, and why."""

from __future__ import annotations

from local_stack.customerio import FakeCustomerIO
from tests.conftest import APP_KEY, PIPELINES_KEY
from tests.unit.test_ops import run, secret_env


def track_secret(fake: FakeCustomerIO, **extra: str) -> dict[str, str]:
    return {
        "site_id": str(fake.site_id),
        "track_api_key": str(fake.track_api_key),
        "app_api_key": APP_KEY,
        **extra,
    }


def test_doctor_track_credentials_select_and_probe_the_track_api(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret with site_id + track_api_key and no Pipelines key
    env = secret_env(fake_cio, track_secret(fake_cio), CUSTOMERIO_TRACK_URL=fake_cio.track_url)

    # WHEN doctor runs
    code, output = run(["doctor"], env)

    # THEN it says identities and events go to the Track API and why, and the credentials check out
    assert code == 0, output
    assert "Track API credentials (site_id + track_api_key and no pipelines_api_key" in output
    assert "identities and events go to the Track API" in output
    assert "✓ Track API credentials accepted (POST" in output
    assert "nothing created" in output
    # AND the probe was an empty v2 batch on the Track listener: nobody was created
    [probe] = fake_cio.requests_to("/api/v2/batch")
    assert (probe.api, probe.json) == ("track", {"batch": []})
    assert fake_cio.track_calls() == []


def test_doctor_rejected_track_credentials_fail_and_say_where_to_find_them(
    aws: None, fake_cio: FakeCustomerIO
) -> None:
    # GIVEN a Track API key Customer.io does not know
    secret = track_secret(fake_cio, track_api_key="wrong")
    env = secret_env(fake_cio, secret, CUSTOMERIO_TRACK_URL=fake_cio.track_url)

    # WHEN doctor runs / THEN it fails naming the Track API keys page; the key never shows
    code, output = run(["doctor"], env)
    assert code == 1
    assert "✗ Track API credentials rejected" in output
    assert "Track API keys" in output
    assert "wrong" not in output


def test_doctor_both_credentials_say_pipelines_wins(aws: None, fake_cio: FakeCustomerIO) -> None:
    # GIVEN a secret with both a Pipelines key and Track credentials
    secret = track_secret(fake_cio, pipelines_api_key=PIPELINES_KEY)
    env = secret_env(fake_cio, secret, CUSTOMERIO_TRACK_URL=fake_cio.track_url)

    # WHEN doctor runs / THEN Pipelines is used, the Track pair is named as unused, only Pipelines probed
    code, output = run(["doctor"], env)
    assert code == 0, output
    assert "identities and events go to the Pipelines API; site_id + track_api_key unused" in output
    assert "✓ Pipelines key accepted" in output
    assert fake_cio.requests_to("/api/v2/batch") == []
