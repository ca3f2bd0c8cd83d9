"""Talking to a Salesforce org: OAuth 2.0 tokens, and REST calls read by Salesforce's signals.

Tokens come from the client credentials flow or the JWT bearer flow against the
configured ``login_url``. One token is kept per process and fetched again, once,
when a call answers 401 ``INVALID_SESSION_ID`` (tokens expire, and an admin can
revoke them mid-run). Tokens and secrets are registered with ``redact`` so no log,
error or run record can show them.

Salesforce does not throttle with 429. A 403 ``REQUEST_LIMIT_EXCEEDED`` while the
org still has API calls left (``Sforce-Limit-Info: api-usage=N/LIMIT``) is a
burst limit: back off and try again. The same answer once the 24-hour allowance
is spent cannot be cured by waiting inside a run, so the run stops and says so.
Every response's usage is kept, for the run's record.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from tidegate.destinations.http import RETRYABLE_STATUS, retry_after
from tidegate.errors import DestinationError, RetryableError
from tidegate.redact import redact, register

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
_JWT_LIFETIME_S = 180  # Salesforce accepts assertions that expire within minutes


class AuthConfig(BaseModel):
    """``auth:`` of a Salesforce destination."""

    model_config = ConfigDict(extra="forbid")

    flow: Literal["client_credentials", "jwt_bearer"] = "client_credentials"
    client_id: str
    client_secret: SecretStr | None = None
    username: str | None = None  # jwt_bearer: the user the token acts for
    private_key: SecretStr | None = None  # jwt_bearer: PEM text, e.g. ${SF_PRIVATE_KEY}
    private_key_file: str | None = None  # jwt_bearer: or a PEM file
    audience: str | None = None  # jwt_bearer: defaults to the login URL

    @model_validator(mode="after")
    def _flow_has_what_it_needs(self) -> AuthConfig:
        if self.flow == "client_credentials" and self.client_secret is None:
            raise ValueError("the client_credentials flow needs `client_secret`")
        if self.flow == "jwt_bearer":
            if not self.username:
                raise ValueError("the jwt_bearer flow needs `username` (the user to act for)")
            if (self.private_key is None) == (self.private_key_file is None):
                raise ValueError("the jwt_bearer flow needs one of `private_key` (PEM text) "
                                 "or `private_key_file`")
        return self


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str


class SalesforceApi:
    """One org's REST API for one run: ``request`` returns the response or raises."""

    def __init__(
        self,
        login_url: str,
        auth: AuthConfig,
        api_version: str,
        *,
        root: Path,
        timeout: float = 30.0,
        verify: bool = True,
    ) -> None:
        self.login_url = login_url.rstrip("/")
        self.auth = auth
        self.api_version = api_version
        self.root = root
        self.usage: tuple[int, int] | None = None  # (used, daily limit), last seen
        self._client = httpx.Client(timeout=timeout, verify=verify,
                                    headers={"user-agent": "tidegate"})
        self._token: Token | None = None
        self._lock = threading.Lock()
        for secret in (auth.client_secret, auth.private_key):
            if secret is not None:
                register(secret.get_secret_value())

    # Tokens

    def token(self, stale: Token | None = None) -> Token:
        """The current token; a new one if ``stale`` is the one a call was refused with."""
        with self._lock:
            if self._token is None or self._token == stale:
                self._token = self._fetch_token()
            return self._token

    def _fetch_token(self) -> Token:
        form = (self._jwt_form() if self.auth.flow == "jwt_bearer" else {
            "grant_type": "client_credentials", "client_id": self.auth.client_id,
            "client_secret": self.auth.client_secret.get_secret_value()
            if self.auth.client_secret else ""})
        url = f"{self.login_url}/services/oauth2/token"
        try:
            response = self._client.post(url, data=form)
        except httpx.HTTPError as exc:
            raise RetryableError(f"cannot reach Salesforce at {self.login_url}: "
                                 f"{redact(str(exc) or type(exc).__name__)}") from exc
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableError(f"Salesforce's token endpoint answered HTTP "
                                 f"{response.status_code}", retry_after=retry_after(response))
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            error = body.get("error", f"HTTP {response.status_code}")
            detail = body.get("error_description", "")
            raise DestinationError(
                f"Salesforce refused to grant a token ({self.auth.flow} at {self.login_url}): "
                f"{redact(str(error))}{': ' + redact(str(detail)) if detail else ''}. Fix: "
                "check `auth` (client id and secret or key, the connected app's policies) and "
                "`login_url` (your My Domain URL for client credentials)")
        register(body["access_token"])
        return Token(body["access_token"], str(body.get("instance_url") or self.login_url))

    def _jwt_form(self) -> dict[str, str]:
        try:
            import jwt  # pyjwt[crypto]: only this flow needs it
        except ImportError:
            raise DestinationError("the jwt_bearer flow needs PyJWT with its crypto extra. "
                                   "Fix: pip install 'tidegate[salesforce]'") from None

        key = (self.auth.private_key.get_secret_value() if self.auth.private_key is not None
               else (self.root / str(self.auth.private_key_file)).read_text())
        claims = {"iss": self.auth.client_id, "sub": self.auth.username,
                  "aud": self.auth.audience or self.login_url,
                  "exp": int(time.time()) + _JWT_LIFETIME_S}
        return {"grant_type": JWT_GRANT, "assertion": jwt.encode(claims, key, algorithm="RS256")}

    # Calls

    def url(self, path: str, token: Token) -> str:
        """``path`` under the versioned REST root, unless it is absolute (``/services/…``)."""
        if path.startswith("/services/"):
            return token.instance_url.rstrip("/") + path
        return f"{token.instance_url.rstrip('/')}/services/data/v{self.api_version}/{path}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One REST call with a valid token; raises for throttling, limits and outages.

        Any other answer (2xx, or a 4xx the caller reads per record) is returned.
        """
        token = self.token()
        for attempt in (1, 2):
            headers = {**kwargs.pop("headers", {}),
                       "authorization": f"Bearer {token.access_token}"}
            try:
                response = self._client.request(method, self.url(path, token), headers=headers,
                                                **kwargs)
            except httpx.TimeoutException as exc:
                raise RetryableError("Salesforce did not answer in time") from exc
            except httpx.TransportError as exc:
                raise RetryableError(f"cannot reach Salesforce: {redact(str(exc))}") from exc
            self._note_usage(response)
            if response.status_code == 401 and attempt == 1 and _code(response) in (
                    "INVALID_SESSION_ID", None):
                token = self.token(stale=token)  # expired or revoked: one new token
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "authorization"}
                continue
            self._raise_for_limits(response)
            return response
        raise DestinationError("Salesforce refused a freshly granted token (401). Fix: check the "
                               "connected app's user has API access")

    def _note_usage(self, response: httpx.Response) -> None:
        found = _USAGE.search(response.headers.get("sforce-limit-info", ""))
        if found:
            # Concurrent calls answer out of order: the highest count is the latest.
            seen = (int(found.group(1)), int(found.group(2)))
            with self._lock:
                if self.usage is None or seen[0] >= self.usage[0]:
                    self.usage = seen

    def _raise_for_limits(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 403 and _code(response) == "REQUEST_LIMIT_EXCEEDED":
            used, limit = self.usage or (0, 0)
            if limit and used >= limit:
                raise DestinationError(
                    f"the org's daily API limit is spent ({used:,} of {limit:,} calls in the "
                    "last 24 hours). Fix: run again when the allowance recovers, or raise it "
                    "in Salesforce; what was acknowledged is kept")
            raise RetryableError("Salesforce is throttling (403 REQUEST_LIMIT_EXCEEDED)",
                                 retry_after=retry_after(response))
        if status in RETRYABLE_STATUS:
            raise RetryableError(f"Salesforce answered HTTP {status}",
                                 retry_after=retry_after(response))

    def close(self) -> None:
        self._client.close()


def _code(response: httpx.Response) -> str | None:
    """The ``errorCode`` of Salesforce's error body (a JSON array of errors)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code = body[0].get("errorCode")
        return str(code) if code else None
    return None
