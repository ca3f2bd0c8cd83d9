"""The file destination: change files per batch, atomic replacement, replay by read_changes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidegate.destinations.base import Batch, SyncTarget
from tidegate.destinations.file import (
    FileConfig,
    FileDestination,
    _replace_atomically,
    read_changes,
)
from tidegate.errors import ConfigError

FORMATS = ["parquet", "csv", "jsonl"]
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()),
                    ("active", pa.bool_())])


@pytest.fixture
def destinations(tmp_path: Path) -> Iterator[list[FileDestination]]:
    made: list[FileDestination] = []
    yield made
    for dest in made:
        dest.close()


def make(tmp_path: Path, made: list[FileDestination], fmt: str, *,
         object: str = "accounts", path: str = "exports", run_id: int = 7) -> FileDestination:
    target = SyncTarget(sync="accounts", object=object, mode="mirror", match_fields=("id",),
                        fields=("name", "score", "active"), project_root=tmp_path,
                        run_id=run_id)
    dest = FileDestination("out", FileConfig(type="file", path=path, format=fmt), target)  # type: ignore[arg-type]
    made.append(dest)
    return dest


def batch(op: str, rows: list[dict[str, Any]], batch_id: str, *,
          schema: pa.Schema = SCHEMA, key: tuple[str, ...] = ("id",)) -> Batch:
    keys = [json.dumps(r[key[0]]) if len(key) == 1 else json.dumps({k: r[k] for k in key})
            for r in rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    return Batch(id=batch_id, operation=op, key_text=pa.array(keys, pa.string()), table=table)  # type: ignore[arg-type]


def rows(ids: range, score: float = 1.5) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"name {i}", "score": score + i, "active": i % 2 == 0}
            for i in ids]


def fields(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {json.dumps(r["id"]): r for r in records}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_through_read_changes(
    tmp_path: Path, destinations: list[FileDestination], fmt: str
) -> None:
    dest = make(tmp_path, destinations, fmt)
    dest.prepare(SCHEMA)
    first = rows(range(10))
    # Nulls and empty strings are different values and stay different.
    first[3]["name"], first[4]["name"], first[5]["score"] = None, "", None
    first[6]["name"] = 'quoted "text", with a comma\nand a newline'
    assert dest.write(batch("upsert", first, "b1")).rejected == {}
    assert read_changes(tmp_path / "exports", "accounts") == fields(first)

    changed = rows(range(8, 12), score=100)
    dest.write(batch("upsert", changed, "b2"))
    assert read_changes(tmp_path / "exports", "accounts") == fields(first[:8] + changed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_file_carries_the_operation_key_run_and_time(
    tmp_path: Path, destinations: list[FileDestination], fmt: str
) -> None:
    dest = make(tmp_path, destinations, fmt, run_id=42)
    before = dt.datetime.now(dt.UTC)
    dest.write(batch("insert", rows(range(3)), "msg_abc"))
    path = tmp_path / "exports" / "accounts" / f"msg_abc.{fmt}"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    table = pq.read_table(path) if fmt == "parquet" else None
    if table is not None:
        assert table.column_names == [*SCHEMA.names, "_tidegate_op", "_tidegate_key",
                                      "_tidegate_run_id", "_tidegate_written_at"]
        assert set(table.column("_tidegate_op").to_pylist()) == {"insert"}
        assert table.column("_tidegate_key").to_pylist() == ["0", "1", "2"]
        assert set(table.column("_tidegate_run_id").to_pylist()) == {42}
        written = table.column("_tidegate_written_at")[0].as_py()
        assert before - dt.timedelta(seconds=1) <= written <= dt.datetime.now(dt.UTC)
        assert abs(path.stat().st_mtime - written.timestamp()) < 0.001
    else:
        text = path.read_text()
        assert "_tidegate_op" in text and "insert" in text and "42" in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_resending_a_batch_replaces_its_file(
    tmp_path: Path, destinations: list[FileDestination], fmt: str
) -> None:
    dest = make(tmp_path, destinations, fmt)
    same = batch("upsert", rows(range(5)), "msg_same")
    dest.write(same)
    dest.write(same)  # as after a crash before the batch was acknowledged
    folder = tmp_path / "exports" / "accounts"
    assert sorted(p.name for p in folder.iterdir()) == [f"msg_same.{fmt}"]
    assert read_changes(tmp_path / "exports", "accounts") == fields(rows(range(5)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_deletes_apply(tmp_path: Path, destinations: list[FileDestination], fmt: str) -> None:
    dest = make(tmp_path, destinations, fmt)
    dest.write(batch("upsert", rows(range(6)), "b1"))
    # Rows gone from the model carry only their key; a key never written is fine.
    gone = [{"id": i, "name": None, "score": None, "active": None} for i in (1, 4, 99)]
    dest.write(batch("delete", gone, "b2"))
    assert sorted(read_changes(tmp_path / "exports", "accounts")) == ["0", "2", "3", "5"]
    dest.write(batch("upsert", rows(range(4, 5), score=9), "b3"))  # back again
    assert read_changes(tmp_path / "exports", "accounts")["4"]["score"] == 13.0


def test_replay_follows_write_order_not_names(
    tmp_path: Path, destinations: list[FileDestination]
) -> None:
    """Files written within one clock tick still replay in the order they were written."""
    dest = make(tmp_path, destinations, "parquet")
    for n, batch_id in enumerate(["msg_z", "msg_m", "msg_a", "msg_b"]):
        dest.write(batch("upsert", rows(range(1), score=n), batch_id))
    assert read_changes(tmp_path / "exports", "accounts")["0"]["score"] == 3.0


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_nested_values_and_composite_keys(
    tmp_path: Path, destinations: list[FileDestination], fmt: str
) -> None:
    schema = pa.schema([("tenant", pa.string()), ("id", pa.int32()),
                        ("tags", pa.list_(pa.string()))])
    dest = make(tmp_path, destinations, fmt)
    records = [{"tenant": "a", "id": 1, "tags": ["x", "y"]}, {"tenant": "b", "id": 1, "tags": []}]
    dest.write(batch("upsert", records, "b1", schema=schema, key=("tenant", "id")))
    held = read_changes(tmp_path / "exports", "accounts")
    assert held == {json.dumps({"tenant": t, "id": 1}): r
                    for t, r in (("a", records[0]), ("b", records[1]))}


def test_csv_writes_nested_values_as_json_and_bytes_as_base64(
    tmp_path: Path, destinations: list[FileDestination]
) -> None:
    schema = pa.schema([("id", pa.int64()), ("tags", pa.list_(pa.int64())), ("raw", pa.binary())])
    dest = make(tmp_path, destinations, "csv")
    dest.write(batch("upsert", [{"id": 1, "tags": [1, 2], "raw": b"\x00\x01"}], "b1",
                     schema=schema))
    assert read_changes(tmp_path / "exports", "accounts")["1"] == {
        "id": 1, "tags": "[1, 2]", "raw": "AAE="}


def test_a_failed_write_leaves_neither_a_half_file_nor_a_temporary_one(tmp_path: Path) -> None:
    final = tmp_path / "b1.csv"
    final.write_text("the previous, whole file\n")

    def half_then_crash(path: Path) -> None:
        path.write_text("half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        _replace_atomically(final, half_then_crash, 0)
    assert final.read_text() == "the previous, whole file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["b1.csv"]


def test_path_is_relative_to_the_project_and_object_must_stay_inside(
    tmp_path: Path, destinations: list[FileDestination]
) -> None:
    dest = make(tmp_path, destinations, "jsonl", path="out/nested")
    dest.check()
    dest.write(batch("upsert", rows(range(2)), "b1"))
    assert (tmp_path / "out" / "nested" / "accounts" / "b1.jsonl").is_file()
    with pytest.raises(ConfigError, match="object"):
        make(tmp_path, destinations, "csv", object="../escape").prepare(SCHEMA)
    assert read_changes(tmp_path / "out", "never-written") == {}
