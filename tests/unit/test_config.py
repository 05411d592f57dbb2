"""Pipeline configuration: every walkthrough key, defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from filedge_core.config import load_pipeline, parse_pipeline
from filedge_core.errors import ConfigError
from tests.support import WALKTHROUGH_CONFIG

BASE = WALKTHROUGH_CONFIG


def with_(**changes):
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not None}


def error_of(data, source="p.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(data, source, Path("/base"))
    return str(info.value)


def test_walkthrough_config_and_defaults() -> None:
    config = parse_pipeline(BASE, "p.yaml", Path("/base"))
    assert config.name == "orders"
    assert config.connector.url == "sqlite:////base/orders.db"
    assert config.stale_timeout_seconds == 1800
    minimal = parse_pipeline(with_(retry_cap=None, stale_timeout_minutes=None, write_mode=None), "p", Path("/b"))
    assert (minimal.retry_cap, minimal.stale_timeout_minutes, minimal.write_mode) == (3, 30, "append")


def test_column_dest_defaults_to_source() -> None:
    config = parse_pipeline(with_(columns=[{"source": "amount", "type": "float"}]), "p", Path("/b"))
    assert config.columns[0].dest == "amount" and config.columns[0].required is False


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"columns": [{"source": "a", "type": "string"}, {"source": "b", "type": "flaot"}]},
         "p.yaml: columns[1].type: unknown type 'flaot'"),
        ({"format": "xml"}, "p.yaml: format: unknown format 'xml'"),
        ({"write_mode": "merge"}, "p.yaml: write_mode: unknown write_mode 'merge'"),
        ({"retry_cap": 0}, "p.yaml: retry_cap: Input should be greater than or equal to 1"),
        ({"stale_timeout_minutes": -1}, "p.yaml: stale_timeout_minutes: Input should be greater than 0"),
        ({"connector": {"type": "oracle", "url": "x"}}, "p.yaml: connector.type: unknown connector type 'oracle'"),
        ({"connector": {"type": "sqlite"}}, "p.yaml: connector.url: required key is missing"),
        ({"colums": []}, "p.yaml: colums: unknown key"),
        ({"dest_table": "orders; DROP TABLE x"}, "p.yaml: dest_table: 'orders; DROP TABLE x' is not a valid identifier"),
        ({"dest_table": 'x"y'}, "p.yaml: dest_table: 'x\"y' is not a valid identifier"),
        ({"columns": [{"source": "a", "dest": "x"}, {"source": "b", "dest": "X"}]},
         "p.yaml: columns: destination column 'X' appears twice"),
        ({"columns": [{"source": "a", "requried": True}]}, "p.yaml: columns[0].requried: unknown key"),
        ({"columns": []}, "p.yaml: columns: List should have at least 1 item"),
        ({"columns": [{"source": "_filedge_file_hash"}]}, "reserved"),
    ],
)
def test_errors_name_the_key(change, expected) -> None:
    assert expected in error_of(with_(**change))


def test_missing_dest_table() -> None:
    data = dict(BASE)
    del data["dest_table"]
    assert error_of(data) == "p.yaml: dest_table: required key is missing"


def test_env_var_in_url(monkeypatch) -> None:
    monkeypatch.setenv("FILEDGE_TEST_PW", "s3cret")
    url = "postgresql://u:${FILEDGE_TEST_PW}@h/db"
    config = parse_pipeline(with_(connector={"type": "postgresql", "url": url}), "p", Path("/b"))
    assert config.connector.url == "postgresql://u:s3cret@h/db"
    monkeypatch.delenv("FILEDGE_TEST_PW")
    assert "environment variable 'FILEDGE_TEST_PW' is not set" in error_of(with_(connector={"type": "postgresql", "url": url}))


def test_config_hash_changes_with_config() -> None:
    a = parse_pipeline(BASE, "p", Path("/b"))
    b = parse_pipeline(with_(retry_cap=4), "p", Path("/b"))
    assert a.config_hash != b.config_hash and len(a.config_hash) == 64


def test_yaml_errors_name_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("format: csv\ncolumns: [\n  - x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_pipeline(path)


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_pipeline(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_pipeline(tmp_path / "list.yaml")


def test_relative_sqlite_url_resolves_against_config_dir(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "p.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_pipeline(path).connector.url == f"sqlite:///{tmp_path / 'sub' / 'orders.db'}"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=s3cret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("host=h password = 'a s3cret' user=u", "host=h password = *** user=u"),
        ("FATAL: password authentication failed for user u", "FATAL: password authentication failed for user u"),
    ],
)
def test_mask_hides_passwords_in_every_form_libpq_reads(text: str, masked: str) -> None:
    from filedge_core.dburl import mask

    assert mask(text) == masked
