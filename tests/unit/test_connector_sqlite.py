"""The SQLite destination: typed table, ledger fence, delete-then-insert, table checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from filedge_core.config import parse_pipeline
from filedge_core.connectors import FileWrite, open_connector
from filedge_core.errors import ConfigError, DatabaseUnavailable, LeaseLost, TransientError

H = "c" * 64


def make(tmp_path: Path, **changes):
    data = {
        "dest_table": "orders",
        "connector": {"type": "sqlite", "url": "sqlite:///dest.db"},
        "columns": [
            {"source": "id", "type": "int", "required": True},
            {"source": "when", "dest": "when", "type": "datetime"},
            {"source": "day", "type": "date"},
            {"source": "ok", "type": "bool"},
            {"source": "select", "type": "string"},  # a keyword: quoting matters
        ],
        **changes,
    }
    connector = open_connector(parse_pipeline(data, "p.yaml", tmp_path))
    connector.prepare()
    return connector


def frame(ids: list[int]) -> pl.DataFrame:
    from datetime import date, datetime, timezone

    return pl.DataFrame(
        {
            "id": ids,
            "when": [datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)] * len(ids),
            "day": [date(2024, 1, 2)] * len(ids),
            "ok": [True] * len(ids),
            "select": ["x"] * len(ids),
        }
    )


def table(tmp_path: Path, sql: str = "SELECT * FROM orders ORDER BY id") -> list[tuple]:
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        return conn.execute(sql).fetchall()


def test_creates_typed_table_and_writes(tmp_path: Path) -> None:
    connector = make(tmp_path)
    assert connector.write(FileWrite("orders", H, 1, frame([1, 2]))).rows_written == 2
    assert table(tmp_path) == [
        (1, "2024-01-02 03:04:05.000000", "2024-01-02", 1, "x", H),
        (2, "2024-01-02 03:04:05.000000", "2024-01-02", 1, "x", H),
    ]
    types = table(tmp_path, "SELECT name, type FROM pragma_table_info('orders')")
    assert types == [("id", "INTEGER"), ("when", "TIMESTAMP"), ("day", "DATE"), ("ok", "BOOLEAN"),
                     ("select", "TEXT"), ("_filedge_file_hash", "TEXT")]
    indexes = table(tmp_path, "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    assert indexes == [("ix_orders_filedge_file_hash", "orders")]
    assert table(tmp_path, "SELECT pipeline, file_hash, claim_token, row_count FROM _filedge_loads") == [("orders", H, 1, 2)]


def test_rewrite_is_idempotent(tmp_path: Path) -> None:
    connector = make(tmp_path)
    connector.write(FileWrite("orders", H, 1, frame([1, 2, 3])))
    connector.write(FileWrite("orders", H, 2, frame([1, 2, 3])))
    connector.write(FileWrite("orders", "d" * 64, 1, frame([9])))
    assert [r[0] for r in table(tmp_path)] == [1, 2, 3, 9]


def test_older_token_is_refused_and_rows_untouched(tmp_path: Path) -> None:
    connector = make(tmp_path)
    connector.write(FileWrite("orders", H, 5, frame([1, 2])))
    with pytest.raises(LeaseLost, match="claim token 4 is older than 5"):
        connector.write(FileWrite("orders", H, 4, frame([7])))
    assert [r[0] for r in table(tmp_path)] == [1, 2]
    assert table(tmp_path, "SELECT claim_token FROM _filedge_loads") == [(5,)]


def test_existing_foreign_table_is_a_config_error(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(ConfigError, match="has no _filedge_file_hash column"):
        make(tmp_path)


def test_existing_table_missing_column_is_a_config_error(tmp_path: Path) -> None:
    make(tmp_path).close()
    with pytest.raises(ConfigError, match="already exists without column 'extra'"):
        make(tmp_path, columns=[{"source": "id", "type": "int"}, {"source": "extra"}])


def test_two_pipelines_cannot_share_a_table(tmp_path: Path) -> None:
    make(tmp_path).write(FileWrite("orders", H, 1, frame([1])))
    with pytest.raises(ConfigError, match="already loaded by pipeline 'orders'"):
        make(tmp_path, name="other")


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        make(tmp_path, connector={"type": "sqlite", "url": "sqlite:///nowhere/dest.db"})


def test_failure_mid_write_rolls_back_everything(tmp_path: Path) -> None:
    connector = make(tmp_path)
    connector.write(FileWrite("orders", H, 1, frame([1, 2])))
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON orders WHEN NEW.id = 3 BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(TransientError, match="refused"):
        connector.write(FileWrite("orders", H, 2, frame([1, 2, 3])))
    assert [r[0] for r in table(tmp_path)] == [1, 2], "the delete and partial insert were rolled back"
    assert table(tmp_path, "SELECT claim_token FROM _filedge_loads") == [(1,)]


def test_existing_column_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        conn.execute('CREATE TABLE orders (id INTEGER, "when" TIMESTAMP, day DATE, ok BOOLEAN, '
                     '"select" NUMERIC, _filedge_file_hash TEXT)')
    with pytest.raises(ConfigError, match="column 'select' of table 'orders' is NUMERIC .NUMERIC affinity., "
                                          "which cannot hold type 'string' as written .expected TEXT."):
        make(tmp_path)


def test_existing_compatible_table_is_used(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        conn.execute('CREATE TABLE orders (id BIGINT, "when" TEXT, day VARCHAR(10), ok INT, "select" CLOB, '
                     "_filedge_file_hash TEXT, extra TEXT)")
    assert make(tmp_path).write(FileWrite("orders", H, 1, frame([1]))).rows_written == 1


def test_stored_rows_reads_only(tmp_path: Path) -> None:
    config = parse_pipeline({"dest_table": "orders", "connector": {"type": "sqlite", "url": "sqlite:///dest.db"},
                             "columns": [{"source": "id", "type": "int"}]}, "p.yaml", tmp_path)
    reader = open_connector(config)
    assert (reader.stored_rows(H).rows, reader.stored_rows(H).rejected) == (None, None)
    assert not (tmp_path / "dest.db").exists(), "nothing is created"
    writer = open_connector(config)
    writer.prepare()
    writer.write(FileWrite("orders", H, 1, pl.DataFrame({"id": [1, 2, 3]})))
    writer.close()
    assert (reader.stored_rows(H).rows, reader.stored_rows(H).rejected) == (3, None)
    assert reader.stored_rows("d" * 64).rows == 0
