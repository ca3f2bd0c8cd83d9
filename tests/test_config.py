"""Configuration: interpolation, aliases, and every error named with file, line, key and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tidegate import ConfigError, Project
from tidegate.config import load_project_config

GOOD = """\
name: acme
sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb
destinations:
  hook:
    type: webhook
    url: ${HOOK_URL:-http://127.0.0.1:9/in}
syncs:
  scores:
    source: warehouse
    query: select id, score from scores
    primary_key: id
    destination: hook
    object: Account
    job_type: upsert
    fields: [score]
"""


def write(root: Path, text: str, name: str = "tidegate.yml") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(root: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Project.load(root, env=env or {})
    return [str(p) for p in info.value.problems]


def test_a_good_project_loads_with_defaults_and_aliases(project_dir: Path) -> None:
    write(project_dir, GOOD)
    project = Project.load(project_dir, env={})
    sync = project.sync("scores")
    assert sync.mode == "upsert"  # job_type is an alias of mode
    assert sync.field_map == {"score": "score"}
    assert sync.match_columns == [("id", "id")]
    assert project.settings.state == "sqlite:///.tidegate/state.db"
    assert project.settings.destinations["hook"]["url"] == "http://127.0.0.1:9/in"


def test_env_interpolation_and_defaults(project_dir: Path) -> None:
    write(project_dir, GOOD)
    project = Project.load(project_dir, env={"HOOK_URL": "http://example.test/x"})
    assert project.settings.destinations["hook"]["url"] == "http://example.test/x"


def test_fields_as_a_mapping_and_syncs_in_their_own_files(project_dir: Path) -> None:
    write(project_dir, GOOD.split("syncs:")[0])
    write(project_dir, """\
        source: warehouse
        table: analytics.scores
        primary_key: [region, id]
        destination: hook
        object: Account
        mode: mirror
        fields: {score: APS__c}
        """, "syncs/aps.yml")
    write(project_dir, """\
        syncs:
          other:
            source: warehouse
            query: select 1 as id
            primary_key: id
            destination: hook
            object: X
            mode: insert
        """, "syncs/more.yml")
    project = Project.load(project_dir, env={})
    assert sorted(project.syncs) == ["aps", "other"]
    aps = project.sync("aps")
    assert aps.field_map == {"score": "APS__c"}
    assert aps.key_columns == ["region", "id"]
    assert aps.sql == "select * from analytics.scores"


def test_malformed_yaml_names_file_and_line(project_dir: Path) -> None:
    write(project_dir, "name: acme\nsources:\n  warehouse: {type: duckdb\n")
    [message] = problems(project_dir)
    assert message.startswith("tidegate.yml:")
    assert "invalid YAML" in message


def test_unknown_keys_are_named_with_their_line_and_a_suggestion(project_dir: Path) -> None:
    write(project_dir, GOOD.replace("    primary_key: id\n", "    primary_kee: id\n"))
    found = problems(project_dir)
    assert any(
        m.startswith("tidegate.yml:14: syncs.scores.primary_kee: unknown key")
        and "did you mean 'primary_key'" in m
        for m in found
    ), found
    assert any("primary_key" in m and "missing" in m for m in found)


def test_a_missing_env_var_is_named_where_it_is_used(project_dir: Path) -> None:
    write(project_dir, GOOD.replace("${HOOK_URL:-http://127.0.0.1:9/in}", "${HOOK_URL}"))
    [message] = problems(project_dir)
    assert message.startswith("tidegate.yml:9: destinations.hook.url:")
    assert "HOOK_URL is not set" in message
    assert "export HOOK_URL=" in message


def test_unknown_source_and_destination_names(project_dir: Path) -> None:
    text = GOOD.replace("    source: warehouse", "    source: warehous").replace(
        "destination: hook", "destination: crm"
    )
    write(project_dir, text)
    found = problems(project_dir)
    assert any(m.startswith("tidegate.yml:12: syncs.scores.source: unknown source 'warehous'")
               and "did you mean 'warehouse'" in m for m in found), found
    assert any(m.startswith("tidegate.yml:15: syncs.scores.destination: unknown destination "
                            "'crm'") for m in found), found


def test_unknown_destination_type_and_bad_destination_settings(project_dir: Path) -> None:
    text = GOOD.replace("    type: webhook\n", "    type: webhok\n")
    write(project_dir, text)
    [message] = problems(project_dir)
    assert "tidegate.yml:8: destinations.hook.type: unknown destination type 'webhok'" in message
    assert "did you mean 'webhook'" in message


def test_every_problem_is_reported_at_once(project_dir: Path) -> None:
    text = (GOOD.replace("    path: warehouse.duckdb\n", "    path: warehouse.duckdb\n    pth: x\n")
            .replace("job_type: upsert", "job_type: upsertt")
            .replace("    object: Account\n", ""))
    write(project_dir, text)
    found = problems(project_dir)
    assert len(found) == 3, found
    assert any("sources.warehouse.pth: unknown key" in m for m in found)
    assert any("syncs.scores.mode" in m and "upsert" in m for m in found)
    assert any("'object' is missing" in m for m in found)


def test_mode_and_job_type_together_is_an_error(project_dir: Path) -> None:
    both = "    job_type: upsert\n    mode: insert\n"
    write(project_dir, GOOD.replace("    job_type: upsert\n", both))
    [message] = problems(project_dir)
    assert "not both" in message and "syncs.scores.job_type" in message


def test_query_and_table_are_exclusive(project_dir: Path) -> None:
    write(project_dir, GOOD.replace("    primary_key: id\n", "    primary_key: id\n    table: t\n"))
    [message] = problems(project_dir)
    assert "exactly one of `query` or `table`" in message


def test_a_mode_the_destination_cannot_do(project_dir: Path) -> None:
    text = GOOD.replace("""    type: webhook
    url: ${HOOK_URL:-http://127.0.0.1:9/in}""", """    type: file
    path: out/""")
    write(project_dir, text)
    Project.load(project_dir, env={})  # file supports every mode


def test_the_same_sync_in_two_files(project_dir: Path) -> None:
    write(project_dir, GOOD)
    write(project_dir, "syncs:\n  scores: {}\n", "syncs/dup.yml")
    found = problems(project_dir)
    assert any("syncs/dup.yml" in m and "defined twice" in m for m in found), found


def test_no_project_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_project_config(tmp_path)
    assert "tidegate init" in str(info.value)


def test_key_given_twice(project_dir: Path) -> None:
    write(project_dir, GOOD + "name: again\n")
    [message] = problems(project_dir)
    assert message.startswith("tidegate.yml:19: name: key given twice")
