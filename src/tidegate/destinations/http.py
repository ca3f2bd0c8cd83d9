"""The one place that classifies HTTP outcomes for HTTP-based destinations.

It also holds ``check_http_url``, the check that a configured URL is http(s)
with a host, which the webhook destination and the alert channels share.

Default contract (SPEC §6, the webhook's): 2xx accepts, 408 / 429 / 5xx and
transport failures are transient (``RetryableError``, honouring
``Retry-After``), any other status rejects the batch with the status and the
start of the body. A connector whose API signals differently (Salesforce's
403 ``REQUEST_LIMIT_EXCEEDED``, HubSpot's ``policyName``, Iterable's failures
inside a 200) overrides ``classify`` and nothing else.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tidegate.destinations.base import Destination
from tidegate.errors import DestinationError, RetryableError
from tidegate.redact import redact

if TYPE_CHECKING:
    import httpx

# httpx (and the standard library's HTTP client under it) is imported when a
# destination first connects, not when its module is: a project's configuration is
# checked without it, and the command line imports it meanwhile, on a thread of its
# own, while the run plans (``imports.ahead``).
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT_S, DEFAULT_CONNECT_S = 30.0, 10.0
_BODY_PREVIEW = 300
T = TypeVar("T")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait per the ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        import email.utils

        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def check_http_url(value: str, key: str) -> None:
    """ValueError unless ``value`` is an http(s) URL with a host; never quotes the value."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"`{key}` must start with http:// or https://")
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        host = ""
    if not host or any(c.isspace() or c in "<>\\^`{|}" for c in host):
        raise ValueError(f"`{key}` is not a valid http(s) URL with a host")


def body_preview(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return redact(text[:_BODY_PREVIEW] + ("…" if len(text) > _BODY_PREVIEW else ""))


class HttpDestination(Destination):
    """A destination reached over HTTP with one pooled, keep-alive client."""

    _client: httpx.Client | None = None
    _client_lock = threading.Lock()
    _transport: httpx.BaseTransport
    _direct = False
    # Loading the CA bundle costs tens of milliseconds, noticeable in a small run;
    # a destination that only ever speaks plain http:// (a loopback receiver) skips it.
    tls: bool = True

    @property
    def client(self) -> httpx.Client:
        # Worker threads share one pool; two of them must not each build a client.
        with self._client_lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> httpx.Client:
        import urllib.request

        import httpx

        from tidegate.destinations.transport import PooledTransport

        # With a proxy in the environment the client decides per URL; without
        # one every request goes to this transport, so ``send`` may go there itself.
        self._direct = not urllib.request.getproxies()
        self._transport = (
            PooledTransport(verify=self.tls) if self._direct else httpx.HTTPTransport(
                verify=self.tls,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
        )
        return httpx.Client(
            transport=self._transport,
            timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=DEFAULT_CONNECT_S),
            headers={"user-agent": "tidegate"},
        )

    def send(self, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """One request; transport failures become ``RetryableError``.

        The request is built by the client (its headers, timeouts) and handed
        straight to its transport: the cookie, auth, redirect and hook layers
        a batch never uses cost a third of the CPU of a request, and a run
        makes hundreds of them.
        """
        import httpx

        try:
            client = self.client
            if not self._direct:
                return client.request(method, url, **kwargs)
            request = client.build_request(method, url, **kwargs)
            response = self._transport.handle_request(request)
            response.request = request
            response.read()
            return response
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timed out talking to {_host(url)}") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"cannot reach {_host(url)}: {redact(str(exc))}") from exc

    def before_run(self, what: str, call: Callable[[], T], attempts: int = 5) -> T:
        """``call`` (a read made before the first batch), retried on transient failures.

        It runs outside the deliverer's retries: a blip (or a 429) here must not
        fail a run that would otherwise go through.
        """
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except RetryableError as exc:
                if attempt == attempts:
                    raise DestinationError(
                        f"{self.describe()} did not answer {what} after {attempt} "
                        f"attempt(s): {exc}. Check that it is up; nothing was sent") from exc
                time.sleep(min(exc.retry_after or 0.1 * 2 ** (attempt - 1), 10.0))
        raise AssertionError("unreachable")

    def classify(self, response: httpx.Response) -> str | None:
        """None when accepted; a rejection message for the whole batch otherwise.

        Raises ``RetryableError`` for transient statuses.
        """
        status = response.status_code
        if 200 <= status < 300:
            return None
        if status in RETRYABLE_STATUS:
            raise RetryableError(
                f"HTTP {status} from {_host(str(response.url))}: {body_preview(response)}",
                retry_after=retry_after(response),
            )
        return f"HTTP {status}: {body_preview(response)}"

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _host(url: str | httpx.URL) -> str:
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "the destination"
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
