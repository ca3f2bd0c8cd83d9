"""Salesforce tokens and REST calls, against the local sandbox org over loopback HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi
from tidegate.errors import DestinationError, RetryableError
from tidegate.sandbox.salesforce import SalesforceSandbox

SECRET = "sandbox-Secret-4471"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(client_id="tidegate", client_secret=SECRET) as sandbox:
        yield sandbox


def api(org: SalesforceSandbox, secret: str = SECRET) -> SalesforceApi:
    auth = AuthConfig(flow="client_credentials", client_id="tidegate", client_secret=secret)
    return SalesforceApi(org.url, auth, "62.0", root=Path("."))


def test_client_credentials_token_is_fetched_once_and_used(org: SalesforceSandbox) -> None:
    client = api(org)
    first = client.request("GET", "sobjects/Account/describe")
    assert first.status_code == 200 and first.json()["name"] == "Account"
    token = client.token()
    client.request("GET", "limits")
    assert client.token() is token  # cached for the run
    assert client.usage is not None and client.usage[0] == org.api_usage
    client.close()


def test_an_expired_token_is_replaced_once_mid_run(org: SalesforceSandbox) -> None:
    client = api(org)
    client.request("GET", "limits")
    before = client.token()
    org.expire_tokens()
    again = client.request("GET", "sobjects/Account/describe")
    assert again.status_code == 200 and client.token() != before
    client.close()


def test_jwt_bearer_signs_an_assertion_the_org_accepts(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "key.pem").write_text(pem)
    with SalesforceSandbox(client_id="other", client_secret="x", consumer_key="3MVG9-app",
                           public_key=public) as org:
        auth = AuthConfig(flow="jwt_bearer", client_id="3MVG9-app", username="ops@acme.test",
                          private_key_file="key.pem", audience="https://login.salesforce.com")
        client = SalesforceApi(org.url, auth, "62.0", root=tmp_path)
        assert client.request("GET", "limits").status_code == 200
        client.close()
        wrong = AuthConfig(flow="jwt_bearer", client_id="someone-else", username="ops@acme.test",
                           private_key=pem)
        refused = SalesforceApi(org.url, wrong, "62.0", root=tmp_path)
        with pytest.raises(DestinationError, match="refused to grant a token"):
            refused.request("GET", "limits")
        refused.close()


def test_a_refused_secret_is_a_clear_error_that_never_shows_it(
    org: SalesforceSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-Secret-9"
    client = api(org, secret=wrong)
    with pytest.raises(DestinationError) as info:
        client.request("GET", "limits")
    text = str(info.value)
    assert "invalid_client" in text and "Fix:" in text
    assert wrong not in text and wrong not in caplog.text
    client.close()


def test_403_request_limit_exceeded_is_a_backoff_until_the_daily_limit_is_spent(
    org: SalesforceSandbox,
) -> None:
    client = api(org)
    client.request("GET", "limits")
    org.throttle_next(1)
    with pytest.raises(RetryableError, match="throttling"):
        client.request("GET", "limits")
    assert client.request("GET", "limits").status_code == 200  # the burst passed
    org.use_api(org.daily_limit)
    with pytest.raises(DestinationError, match="daily API limit is spent"):
        client.request("GET", "limits")
    client.close()


def test_outages_are_retryable(org: SalesforceSandbox) -> None:
    client = api(org)
    org.fail_next(1, 503)
    with pytest.raises(RetryableError, match="503"):
        client.request("GET", "limits")
    assert client.request("GET", "limits").status_code == 200
    client.close()


def test_auth_settings_name_what_each_flow_needs() -> None:
    with pytest.raises(ValidationError, match="client_secret"):
        AuthConfig(flow="client_credentials", client_id="x")
    with pytest.raises(ValidationError, match="username"):
        AuthConfig(flow="jwt_bearer", client_id="x", private_key="k")
    with pytest.raises(ValidationError, match="one of `private_key`"):
        AuthConfig(flow="jwt_bearer", client_id="x", username="u")
