"""Snowflake source: the model streams as Snowflake's own Arrow result batches.

The connector (``pip install 'tidegate[snowflake]'``) is imported when the
source is first used. Auth is a password or a key pair, both taken from the
environment through the config's ``${VAR}`` interpolation.

Snowflake folds unquoted identifiers to upper case: a column the model names
``id`` arrives as ``ID``. Such all-upper-case names are given back in lower
case, so a sync names its columns as its SQL wrote them; a quoted mixed-case
name keeps its case. ``column_names`` maps them back for SQL run in Snowflake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from tidegate.config import SnowflakeSourceConfig
from tidegate.errors import ConfigError, Problem, SourceError
from tidegate.redact import redact
from tidegate.sources.base import ModelQueryError, Source

INSTALL_HINT = "pip install 'tidegate[snowflake]'"
# Snowflake error numbers that mean "the SQL is wrong", not "the service failed".
_QUERY_ERRNOS = {1003, 2003, 2140, 2141, 904, 1007, 2043}


def import_connector() -> Any:
    try:
        import snowflake.connector
    except ImportError as exc:
        raise ConfigError(Problem(
            "a snowflake source needs the Snowflake connector, which is not installed",
            fix=INSTALL_HINT)) from exc
    return snowflake.connector


def private_key_der(pem: bytes, passphrase: str | None) -> bytes:
    """The PKCS#8 DER bytes the connector takes, from a PEM key (encrypted or not)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            pem, password=passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise ConfigError(Problem(
            f"the Snowflake private key cannot be read ({redact(reason)})",
            fix="give a PEM private key (-----BEGIN PRIVATE KEY-----) and, if it is "
                "encrypted, its `private_key_passphrase`")) from exc
    return bytes(key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ))


def connect_args(config: SnowflakeSourceConfig, root: Path) -> dict[str, Any]:
    """Keyword arguments for ``snowflake.connector.connect``."""
    args: dict[str, Any] = {"account": config.account, "user": config.user,
                            "application": "tidegate"}
    for key in ("warehouse", "database", "role", "host", "port", "network_timeout"):
        value = getattr(config, key)
        if value is not None:
            args[key] = value
    if config.schema_ is not None:
        args["schema"] = config.schema_
    if config.protocol != "https":
        args["protocol"] = config.protocol
    passphrase = (config.private_key_passphrase.get_secret_value()
                  if config.private_key_passphrase is not None else None)
    if config.password is not None:
        args["password"] = config.password.get_secret_value()
    elif config.private_key is not None:
        args["private_key"] = private_key_der(
            config.private_key.get_secret_value().encode(), passphrase)
    elif config.private_key_path is not None:
        path = Path(config.private_key_path)
        path = path if path.is_absolute() else root / path
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(Problem(
                f"cannot read the Snowflake private key file {path}: {exc.strerror}",
                fix="check `private_key_path`")) from exc
        args["private_key"] = private_key_der(pem, passphrase)
    return args


def tidegate_name(name: str) -> str:
    """A result column's name as the model's SQL wrote it (see the module docstring)."""
    return name.lower() if name.isupper() else name


class SnowflakeSource(Source):
    def __init__(self, name: str, config: SnowflakeSourceConfig, root: Path) -> None:
        super().__init__(name)
        self.config, self.root = config, root
        self._con: Any = None

    def connect(self) -> Any:
        """A new connection (the warehouse diff keeps its own)."""
        connector = import_connector()
        try:
            return connector.connect(**connect_args(self.config, self.root))
        except connector.errors.Error as exc:
            raise SourceError(f"source '{self.name}': cannot connect to Snowflake: "
                              f"{redact(str(exc))}") from exc

    def _connection(self) -> Any:
        if self._con is None:
            self._con = self.connect()
        return self._con

    def read(self, sql: str, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        cursor = self._connection().cursor()
        execute(cursor, sql, self.name)
        schema = arrow_schema(cursor.description)
        return pa.RecordBatchReader.from_batches(schema, _batches(cursor, schema))

    def check(self) -> None:
        cursor = self._connection().cursor()
        execute(cursor, "select 1", self.name)
        cursor.fetchall()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def execute(cursor: Any, sql: str, source: str, params: Any = None) -> None:
    """Run ``sql``; a compilation error is the model's fault, anything else the source's."""
    errors = import_connector().errors
    try:
        cursor.execute(sql, params)
    except errors.ProgrammingError as exc:
        if getattr(exc, "errno", None) in _QUERY_ERRNOS or "compilation" in str(exc).lower():
            raise ModelQueryError(redact(str(exc))) from exc
        raise SourceError(f"source '{source}': {redact(str(exc))}") from exc
    except errors.Error as exc:
        raise SourceError(f"source '{source}': {redact(str(exc))}") from exc


def arrow_schema(description: Any) -> pa.Schema:
    """The Arrow schema of a result, from the column types Snowflake declares.

    Each result batch is cast to it: Snowflake sends a NUMBER column as the
    narrowest integer that holds a batch's values, so batches differ.
    """
    from snowflake.connector.constants import FIELD_ID_TO_NAME

    fields = []
    for col in description:
        kind = FIELD_ID_TO_NAME.get(col.type_code, "TEXT")
        fields.append(pa.field(tidegate_name(col.name),
                               snowflake_type(kind, col.precision, col.scale)))
    return pa.schema(fields)


def snowflake_type(kind: str, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type tidegate reads a Snowflake column type as."""
    if kind == "FIXED":
        # INT is NUMBER(38, 0): read whole numbers as int64, as the connector's Python
        # values are; a value past int64 fails its batch with a hint (see ``_batches``).
        return pa.int64() if not scale else pa.decimal128(precision or 38, scale)
    simple = {
        "REAL": pa.float64(), "BOOLEAN": pa.bool_(), "DATE": pa.date32(),
        "TIME": pa.time64("us"), "TIMESTAMP_NTZ": pa.timestamp("us"),
        "TIMESTAMP_LTZ": pa.timestamp("us", "UTC"), "TIMESTAMP_TZ": pa.timestamp("us", "UTC"),
        "TIMESTAMP": pa.timestamp("us"), "BINARY": pa.binary(),
    }
    # TEXT, and VARIANT / OBJECT / ARRAY, which arrive as their JSON text.
    return simple.get(kind, pa.string())


def _batches(cursor: Any, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for table in cursor.fetch_arrow_batches():
        table = table.rename_columns(schema.names)
        for batch in table.to_batches():
            try:
                yield batch.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SourceError(
                    f"a column does not fit the type tidegate reads it as ({exc}); cast it in "
                    "the model's SQL, e.g. to VARCHAR") from exc
