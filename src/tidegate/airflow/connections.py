"""Airflow connections as tidegate settings: sources, destinations and state stores.

Each function takes an Airflow ``Connection`` (anything with its attributes:
``conn_id``, ``conn_type``, ``host``, ``port``, ``login``, ``password``,
``schema`` and ``extra_dejson``) and returns what ``tidegate.yml`` would hold
for it, so the inline job is validated by the same models as a project file.
Every secret a connection holds is registered with ``tidegate.redact`` first,
so it is masked in every log line, error and run record from then on.

    source       postgres, sqlite, duckdb, snowflake (password or key-pair), or a
                 connection with a ``sqlalchemy_url`` extra
    destination  http → webhook, postgres, salesforce, hubspot, iterable
    state        tidegate, postgres, sqlite
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from tidegate import redact
from tidegate.errors import ConfigError, Problem

# Extra keys that hold secrets in the connections read here (besides ``password``).
_SECRET_EXTRAS = ("consumer_secret", "private_key", "client_secret", "token", "secret",
                  "api_key", "access_token")
_WEBHOOK_SETTINGS = ("max_records", "max_bytes", "requests_per_second", "concurrency",
                     "timeout_s")
_SALESFORCE_SETTINGS = ("api_version", "max_records", "concurrency", "requests_per_second",
                        "timeout_s")
_POSTGRES_SETTINGS = ("max_records", "concurrency", "create_table")
_HUBSPOT_SETTINGS = ("max_records", "requests_per_second", "concurrency", "timeout_s")
_ITERABLE_SETTINGS = ("max_records", "max_bytes", "requests_per_second", "concurrency",
                      "timeout_s")


class ConnectionLike(Protocol):
    conn_id: str
    conn_type: str | None
    host: str | None
    port: int | None
    login: str | None
    password: str | None
    schema: str | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


def register_secrets(conn: ConnectionLike) -> None:
    """Mask the connection's password and secret extras wherever tidegate writes."""
    redact.register(conn.password)
    if conn.password:
        redact.register(quote(conn.password, safe=""))
    extra = conn.extra_dejson
    for name, value in extra.items():
        if isinstance(value, str) and any(s in name.lower() for s in _SECRET_EXTRAS):
            redact.register(value)


def source_settings(conn: ConnectionLike) -> dict[str, Any]:
    """A tidegate source (``sources.<name>``) for the connection."""
    register_secrets(conn)
    kind = _kind(conn)
    extra = conn.extra_dejson
    if kind in ("postgres", "postgresql"):
        return {"type": "postgres", "url": postgres_url(conn)}
    if kind == "sqlite":
        return {"type": "sqlite", "path": _path(conn, "the SQLite file")}
    if kind == "duckdb":
        return {"type": "duckdb", "path": conn.host or extra.get("path") or ":memory:"}
    if kind == "snowflake":
        return snowflake_settings(conn)
    if extra.get("sqlalchemy_url"):
        return {"type": "sqlalchemy", "url": str(extra["sqlalchemy_url"])}
    raise _unsupported(conn, "source", "postgres, sqlite, duckdb or snowflake, or any "
                                       "connection with a `sqlalchemy_url` extra")


def destination_settings(conn: ConnectionLike, overrides: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """A tidegate destination (``destinations.<name>``) for the connection.

    ``overrides`` are settings of the destination type given by the task, which win
    over what the connection says.
    """
    register_secrets(conn)
    kind = _kind(conn)
    extra = conn.extra_dejson
    settings: dict[str, Any]
    if kind in ("http", "https", "webhook"):
        headers = dict(extra.get("headers") or {})
        # Airflow's HTTP connections keep request headers as the extra's other keys.
        headers.update({k: str(v) for k, v in extra.items()
                        if k not in ("headers", "endpoint", *_WEBHOOK_SETTINGS)})
        settings = {"type": "webhook", "url": _http_url(conn, str(extra.get("endpoint", ""))),
                    "headers": headers, **_pick(extra, _WEBHOOK_SETTINGS)}
        if conn.password:
            settings["secret"] = conn.password
    elif kind in ("postgres", "postgresql"):
        settings = {"type": "postgres", "url": postgres_url(conn),
                    **_pick(extra, _POSTGRES_SETTINGS)}
    elif kind == "salesforce":
        settings = salesforce_settings(conn)
    elif kind == "hubspot":
        settings = {"type": "hubspot", "token": conn.password or extra.get("access_token"),
                    **({"base_url": _http_url(conn)} if conn.host else {}),
                    **_pick(extra, _HUBSPOT_SETTINGS)}
    elif kind == "iterable":
        settings = {"type": "iterable", "api_key": conn.password or extra.get("api_key"),
                    **({"base_url": _http_url(conn)} if conn.host else {}),
                    **_pick(extra, _ITERABLE_SETTINGS)}
    else:
        raise _unsupported(conn, "destination",
                           "http (a webhook), postgres, salesforce, hubspot or iterable")
    settings.update(overrides or {})
    return settings


def state_url(conn: ConnectionLike) -> str:
    """The state store URL for the connection (tidegate's own type, postgres or sqlite)."""
    register_secrets(conn)
    kind = _kind(conn)
    extra = conn.extra_dejson
    if extra.get("url"):
        url = str(extra["url"])
        redact.register_url(url)
        return url
    if kind in ("tidegate", "postgres", "postgresql"):
        if not conn.host:
            raise ConfigError(Problem(
                f"connection '{conn.conn_id}' names no state store", key="state_conn_id",
                fix="set its host (a PostgreSQL server) or its `url` extra "
                    "(e.g. sqlite:////var/lib/tidegate/state.db)"))
        return postgres_url(conn)
    if kind == "sqlite":
        return "sqlite:///" + str(Path(_path(conn, "the state database")).resolve())
    raise _unsupported(conn, "state store", "tidegate, postgres or sqlite")


def postgres_url(conn: ConnectionLike) -> str:
    """``postgresql://user:password@host:port/database?extra`` from a postgres connection."""
    if not conn.host:
        raise ConfigError(Problem(f"connection '{conn.conn_id}' has no host",
                                  key=conn.conn_id, fix="set the PostgreSQL server's host"))
    auth = ""
    if conn.login:
        auth = quote(conn.login, safe="")
        if conn.password:
            auth += ":" + quote(conn.password, safe="")
        auth += "@"
    port = f":{conn.port}" if conn.port else ""
    query = "&".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}"
                     for k, v in conn.extra_dejson.items()
                     if k in _LIBPQ_PARAMS and v not in (None, ""))
    url = f"postgresql://{auth}{conn.host}{port}/{quote(conn.schema or 'postgres', safe='')}"
    url += f"?{query}" if query else ""
    redact.register_url(url)
    return url


# libpq connection parameters an Airflow postgres connection may carry in its extra.
_LIBPQ_PARAMS = frozenset({"sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl",
                           "application_name", "connect_timeout", "options",
                           "target_session_attrs", "keepalives", "keepalives_idle"})


def snowflake_settings(conn: ConnectionLike) -> dict[str, Any]:
    """A ``type: snowflake`` source from an Airflow snowflake connection.

    As the Snowflake provider reads it: extras ``account`` (with ``region``, for an
    account locator), ``warehouse``, ``database``, ``role``, ``host`` and ``port``;
    the schema field; key-pair authentication from ``private_key_file`` (a path) or
    ``private_key_content`` (PEM text, or PEM encoded in base64), with the password
    as the key's passphrase; else the password. ``protocol`` (``http``, for a local
    emulator) is tidegate's own extra.
    """
    extra = conn.extra_dejson
    account = str(extra.get("account") or "")
    if not account:
        raise ConfigError(Problem(f"connection '{conn.conn_id}' names no Snowflake account",
                                  key=conn.conn_id, fix="set the `account` extra"))
    region = extra.get("region")
    if region and "." not in account:
        account = f"{account}.{region}"
    settings: dict[str, Any] = {"type": "snowflake", "account": account,
                                "user": conn.login or ""}
    for key in ("warehouse", "database", "role", "host", "port", "protocol"):
        if extra.get(key):
            settings[key] = int(extra[key]) if key == "port" else str(extra[key])
    if conn.schema:
        settings["schema"] = conn.schema
    key_file, key_content = extra.get("private_key_file"), extra.get("private_key_content")
    if key_file and key_content:
        raise ConfigError(Problem(
            f"connection '{conn.conn_id}' gives both `private_key_file` and "
            "`private_key_content`", key=conn.conn_id, fix="keep one of them"))
    if key_file or key_content:
        if key_file:
            settings["private_key_path"] = str(key_file)
        else:
            settings["private_key"] = _pem_text(str(key_content), conn)
        if conn.password:
            settings["private_key_passphrase"] = conn.password
    else:
        if not conn.password:
            raise ConfigError(Problem(
                f"connection '{conn.conn_id}' has neither a password nor a private key",
                key=conn.conn_id,
                fix="set the password, or the `private_key_file` or `private_key_content` "
                    "extra"))
        settings["password"] = conn.password
    return settings


def _pem_text(content: str, conn: ConnectionLike) -> str:
    """The PEM text of a private key given as PEM or, as the provider allows, base64 of it."""
    if "-----BEGIN" in content:
        return content
    try:
        text = base64.b64decode(content, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    if "-----BEGIN" not in text:
        raise ConfigError(Problem(
            f"connection '{conn.conn_id}': `private_key_content` is neither PEM text nor "
            "base64 of it", key=conn.conn_id,
            fix="paste the key file's text (-----BEGIN PRIVATE KEY----- …)"))
    redact.register(text)
    return text


def salesforce_settings(conn: ConnectionLike) -> dict[str, Any]:
    """A salesforce destination from a connection of the Salesforce provider's type.

    tidegate signs in with OAuth: the JWT bearer flow when the connection holds a
    private key (``login`` is the user to act for), else client credentials
    (``consumer_secret``, or the password, is the client secret).
    """
    extra = conn.extra_dejson
    client_id = extra.get("consumer_key") or extra.get("client_id")
    if not client_id:
        raise ConfigError(Problem(
            f"connection '{conn.conn_id}' has no consumer key", key=conn.conn_id,
            fix="set the `consumer_key` extra to the connected app's consumer key "
                "(tidegate signs in with OAuth, not with a password and security token)"))
    key, key_file = extra.get("private_key"), extra.get("private_key_file_path")
    auth: dict[str, Any] = {"client_id": str(client_id)}
    if key or key_file:
        auth.update(flow="jwt_bearer", username=conn.login,
                    **({"private_key": key} if key else {"private_key_file": key_file}))
    else:
        auth.update(flow="client_credentials",
                    client_secret=extra.get("consumer_secret") or conn.password)
    if extra.get("login_url"):
        login_url = str(extra["login_url"])
    elif conn.host:
        login_url = _http_url(conn)
    elif extra.get("domain"):
        login_url = f"https://{extra['domain']}.salesforce.com"
    else:
        login_url = "https://login.salesforce.com"
    settings = {"type": "salesforce", "login_url": login_url, "auth": auth,
                **_pick(extra, _SALESFORCE_SETTINGS)}
    if extra.get("version") and "api_version" not in settings:
        settings["api_version"] = str(extra["version"])
    return settings


def _kind(conn: ConnectionLike) -> str:
    return (conn.conn_type or "").lower().replace("-", "_")


def _pick(extra: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: extra[k] for k in names if k in extra}


def _path(conn: ConnectionLike, what: str) -> str:
    path = conn.host or conn.extra_dejson.get("path")
    if not path:
        raise ConfigError(Problem(f"connection '{conn.conn_id}' names no file",
                                  key=conn.conn_id, fix=f"set its host to the path of {what}"))
    return str(path)


def _http_url(conn: ConnectionLike, endpoint: str = "") -> str:
    host = conn.host or ""
    if "://" in host:
        base = host.rstrip("/")
    else:
        scheme = conn.schema or "https"
        base = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        if not host:
            raise ConfigError(Problem(f"connection '{conn.conn_id}' has no host",
                                      key=conn.conn_id, fix="set the receiver's URL as host"))
    if endpoint:
        base += "/" + endpoint.lstrip("/")
    if urlsplit(base).password:
        redact.register_url(base)
    return base


def _unsupported(conn: ConnectionLike, role: str, supported: str) -> ConfigError:
    return ConfigError(Problem(
        f"connection '{conn.conn_id}' is of type '{conn.conn_type}', which tidegate cannot "
        f"use as a {role}", key=conn.conn_id, fix=f"use a connection of type {supported}"))
