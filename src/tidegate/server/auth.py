"""The API token (``TIDEGATE_API_TOKEN``) and the ways a request may show it.

- ``Authorization: Bearer <token>``: tidegate's clients, Census's and Hightouch's.
- ``Authorization: Basic base64("bearer:<token>")``: how Census documents HTTP Basic
  (and what dagster-census sends).
- The page's session cookie, set by signing in with the token: it holds an HMAC
  of the token, never the token, and is HttpOnly and SameSite=Strict. A write
  made with the cookie must also carry ``X-Tidegate-Page``, which a form on
  another site cannot send.

Every comparison is of SHA-256 digests with ``hmac.compare_digest``: constant
time, and blind to the length of a wrong guess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

COOKIE = "tidegate_session"
PAGE_HEADER = "x-tidegate-page"
BASIC_USER = "bearer"
MIN_TOKEN_LENGTH = 16


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Auth:
    """Checks requests against the token; with no token, every request is let in."""

    def __init__(self, token: str | None) -> None:
        self._token = _digest(token) if token else None
        self.session = (hmac.new(token.encode(), b"tidegate page session", hashlib.sha256)
                        .hexdigest() if token else None)

    @property
    def required(self) -> bool:
        return self._token is not None

    def _same(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(_digest(given), self._token)

    def token_ok(self, given: str) -> bool:
        return self._same(given)

    def header_ok(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self._same(value)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            user_ok = hmac.compare_digest(_digest(user), _digest(BASIC_USER))
            return bool(sep) and self._same(password) and user_ok
        return False

    def cookie_ok(self, value: str | None) -> bool:
        if self.session is None or not value:
            return False
        return hmac.compare_digest(_digest(value), _digest(self.session))
