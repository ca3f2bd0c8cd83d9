"""``TidegateServerHook``: tidegate's REST API (``tidegate serve``) from an Airflow connection.

The connection (type ``tidegate_server``, or any HTTP connection) holds the server
in ``host`` — a whole URL such as ``http://tidegate.internal:8787``, or a host name
with ``port`` and ``schema`` (``http`` unless it says ``https``) — and the API token
(``TIDEGATE_API_TOKEN`` of the server) in ``password``. The token is registered as a
secret, so it never reaches a task log.
"""

from __future__ import annotations

from typing import Any

import httpx

from tidegate import redact
from tidegate.airflow._sdk import BaseHook
from tidegate.airflow.errors import SyncConfigError
from tidegate.errors import Problem, RetryableError

__all__ = ["TidegateServerHook", "base_url"]

TIMEOUT_S = 30.0
# What the API says with each status: these are the caller's to fix, not to retry.
_CALLER_ERRORS = (400, 401, 403, 404, 409, 421, 422)


def base_url(host: str, port: int | None = None, schema: str | None = None) -> str:
    """The server's URL from a connection's ``host`` (a URL, or a name), port and schema."""
    host = host.strip().rstrip("/")
    if "://" in host:
        return host
    scheme = "https" if (schema or "").lower() == "https" else "http"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


class TidegateServerHook(BaseHook):
    """Calls a ``tidegate serve``: trigger a sync, read a run.

    :param server_conn_id: the connection holding the server's URL and token.
    """

    conn_name_attr = "server_conn_id"
    default_conn_name = "tidegate_server_default"
    conn_type = "tidegate_server"
    hook_name = "tidegate server"

    def __init__(self, server_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.server_conn_id = server_conn_id

    def settings(self) -> tuple[str, dict[str, str]]:
        """The server's base URL and the request headers (with the token, if any)."""
        return self._settings(self.get_connection(self.server_conn_id))

    async def asettings(self) -> tuple[str, dict[str, str]]:
        """``settings`` for a trigger, which must not block the triggerer's event loop."""
        return self._settings(await self.aget_connection(self.server_conn_id))

    def _settings(self, conn: Any) -> tuple[str, dict[str, str]]:
        if not conn.host:
            raise SyncConfigError(Problem(
                f"connection '{self.server_conn_id}' has no host",
                key=self.server_conn_id,
                fix="set its host to the server's URL, e.g. http://tidegate.internal:8787"))
        headers = {"Accept": "application/json", "User-Agent": "tidegate-airflow"}
        if conn.password:
            redact.register(conn.password)
            headers["Authorization"] = f"Bearer {conn.password}"
        return base_url(conn.host, conn.port, conn.schema), headers

    def trigger(self, sync: str, *, full: bool = False, force: bool = False) -> dict[str, Any]:
        """Queue a run of ``sync`` (a name or a stable id); return its summary (``queued``)."""
        base, headers = self.settings()
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S) as client:
            return answer(client.post(f"/api/syncs/{sync}/runs",
                                      json={"full": full, "force": force}))

    def get_run(self, run_id: int) -> dict[str, Any]:
        base, headers = self.settings()
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S) as client:
            return answer(client.get(f"/api/runs/{run_id}"))

    def test_connection(self) -> tuple[bool, str]:
        try:
            base, headers = self.settings()
            with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S) as client:
                syncs = answer(client.get("/api/syncs"))["syncs"]
        except Exception as exc:
            return False, redact.redact(str(exc))
        return True, f"tidegate server at {base}: {len(syncs)} sync(s)"


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a 2xx answer; a config error for the caller's mistakes, else retryable."""
    if response.is_success:
        doc: dict[str, Any] = response.json()
        return doc
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {"message": response.text[:200]}
    message = redact.redact(f"tidegate server answered {response.status_code} to "
                            f"{response.request.method} {response.request.url.path}: "
                            f"{error.get('message')}")
    if response.status_code in _CALLER_ERRORS:
        raise SyncConfigError(Problem(message, fix=error.get("fix")))
    raise RetryableError(message)


SUMMARY_KEYS = ("run_id", "sync", "sync_id", "status", "planned", "delivered", "rejected",
                "duration_s", "error", "verdict")


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The run summary (SPEC §4, plus ``sync_id``) out of a ``GET /api/runs/{id}`` answer."""
    return {key: run.get(key) for key in SUMMARY_KEYS}
