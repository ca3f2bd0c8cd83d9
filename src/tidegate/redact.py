"""Keeps secrets out of everything tidegate writes.

Every value that configuration types as secret (passwords in URLs, webhook
secrets, tokens) is registered here when the project loads; ``redact`` replaces
each of them in a text before it reaches a log line, an error message, a run
record or ``--json`` output.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import unquote, urlsplit

MASK = "***"
_MIN_LEN = 4  # shorter values would mask ordinary words
_lock = threading.Lock()
_secrets: set[str] = set()


def register(value: str | None) -> None:
    """Remember a secret value so that ``redact`` masks it from now on."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def register_url(url: str | None) -> None:
    """Remember the password inside a database or HTTP URL, if it has one."""
    if not url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        register(password)
        register(unquote(password))


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    if not _secrets:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """Return a URL with its password masked, for display."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@")
        return parts._replace(netloc=netloc).geturl()
    return url


class RedactingFilter(logging.Filter):
    """Masks secrets in every record of the ``tidegate`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_filter(logger: logging.Logger) -> None:
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
