"""The SQLite destination: ``BEGIN IMMEDIATE``, ledger guard, delete, ``executemany`` insert."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from ..config import PipelineConfig
from ..dburl import mask, sqlite_path
from ..errors import ConfigError, DatabaseUnavailable, LeaseLost, TransientError
from ..faults import checkpoint
from ..identifiers import quote
from .base import HASH_COLUMN, LEDGER_TABLE, FileWrite, shared_table_error

BATCH_ROWS = 50_000
SQL_TYPES = {
    "string": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "BOOLEAN",
    # ISO-8601 text never looks numeric, so these affinities keep it as written.
    "date": "DATE",
    "datetime": "TIMESTAMP",
    # Exact text: any numeric affinity would turn 12.30 into the REAL 12.3.
    "decimal": "TEXT",
}
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# The column affinities (https://sqlite.org/datatype3.html) that keep each type's values as
# written: a NUMERIC "string" column would turn '007' into 7.
_ACCEPTED_AFFINITIES = {
    "string": {"TEXT", "BLOB"},
    "int": {"INTEGER", "NUMERIC", "BLOB"},
    "float": {"REAL", "NUMERIC", "BLOB"},
    "bool": {"INTEGER", "NUMERIC", "BLOB"},
    "date": {"TEXT", "NUMERIC", "BLOB"},
    "datetime": {"TEXT", "NUMERIC", "BLOB"},
    "decimal": {"TEXT", "BLOB"},
}


def affinity(declared: str) -> str:
    """SQLite's type affinity for a declared column type, by its documented rules."""
    kind = declared.upper()
    if "INT" in kind:
        return "INTEGER"
    if any(word in kind for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in kind or not kind:
        return "BLOB"
    if any(word in kind for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _to_sqlite(frame: pl.DataFrame, file_hash: str) -> pl.DataFrame:
    """Values sqlite3 binds natively: dates and datetimes (UTC) as ISO text; the hash appended."""
    exprs = []
    for name, dtype in frame.schema.items():
        if dtype == pl.Date:
            exprs.append(pl.col(name).dt.strftime("%Y-%m-%d"))
        elif isinstance(dtype, pl.Datetime):
            exprs.append(pl.col(name).dt.strftime("%Y-%m-%d %H:%M:%S%.6f"))
        elif isinstance(dtype, pl.Decimal):
            exprs.append(pl.col(name).cast(pl.String))
        else:
            exprs.append(pl.col(name))
    return frame.select(*exprs, pl.lit(file_hash).alias(HASH_COLUMN))


class SqliteConnector:
    """Writes one file per ``BEGIN IMMEDIATE`` transaction into a SQLite database file."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.display_url = mask(config.connector.url)
        self.path = sqlite_path(config.connector.url)
        self.table = quote(config.dest_table)
        self._conn: sqlite3.Connection | None = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"destination {self.display_url}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # e.g. a constraint or trigger refused the rows
            raise TransientError(f"destination {self.display_url}: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:" and not Path(self.path).parent.is_dir():
                raise DatabaseUnavailable(
                    f"destination {self.display_url}: directory {Path(self.path).parent} does not exist"
                )
            with self._errors():
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn
        return self._conn

    def prepare(self) -> None:
        conn = self._connection()
        columns = self.config.columns
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote(LEDGER_TABLE)} ("
                    "pipeline TEXT NOT NULL, file_hash TEXT NOT NULL, dest_table TEXT NOT NULL, "
                    "claim_token INTEGER NOT NULL, row_count INTEGER NOT NULL, loaded_at TEXT NOT NULL, "
                    "PRIMARY KEY (pipeline, file_hash))"
                )
                existing = self._existing_columns(conn)
                if existing is None:
                    defs = ", ".join(f"{quote(c.dest)} {SQL_TYPES[c.type]}" for c in columns)
                    conn.execute(f"CREATE TABLE {self.table} ({defs}, {quote(HASH_COLUMN)} TEXT NOT NULL)")
                else:
                    self._check_fits(existing)
                *schema, name = self.config.dest_table.split(".")
                prefix = f"{quote(schema[0])}." if schema else ""
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {prefix}{quote(f'ix_{name}{HASH_COLUMN}')} "
                    f"ON {quote(name)} ({quote(HASH_COLUMN)})"
                )
                self._check_owner(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _existing_columns(self, conn: sqlite3.Connection) -> dict[str, str] | None:
        """Column name (lower case) -> declared type; None if there is no such table."""
        *schema, name = self.config.dest_table.split(".")
        prefix = f"{quote(schema[0])}." if schema else ""
        pragma = f"PRAGMA {prefix}table_info({quote(name)})"
        rows = conn.execute(pragma).fetchall()
        return {row[1].lower(): row[2] or "" for row in rows} if rows else None

    def _check_fits(self, existing: dict[str, str]) -> None:
        if HASH_COLUMN.lower() not in existing:
            raise ConfigError(
                f"dest_table: table {self.config.dest_table!r} already exists and has no {HASH_COLUMN} column "
                "(it was not created by filedge); choose another dest_table"
            )
        for column in self.config.columns:
            declared = existing.get(column.dest.lower())
            if declared is None:
                raise ConfigError(
                    f"columns: table {self.config.dest_table!r} already exists without column {column.dest!r}"
                )
            if affinity(declared) not in _ACCEPTED_AFFINITIES[column.type]:
                raise ConfigError(
                    f"columns: column {column.dest!r} of table {self.config.dest_table!r} is "
                    f"{declared or 'untyped'} ({affinity(declared)} affinity), which cannot hold type "
                    f"{column.type!r} as written (expected {SQL_TYPES[column.type]})"
                )

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(
            f"SELECT pipeline FROM {quote(LEDGER_TABLE)} WHERE dest_table = ? AND pipeline <> ? LIMIT 1",
            (self.config.dest_table, self.config.name),
        ).fetchone()
        if row:
            raise shared_table_error(self.config.dest_table, row[0])

    def write(self, request: FileWrite) -> int:
        conn = self._connection()
        ledger = quote(LEDGER_TABLE)
        names = [*request.frame.columns, HASH_COLUMN]
        insert = (
            f"INSERT INTO {self.table} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        rows = _to_sqlite(request.frame, request.file_hash)
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    f"SELECT claim_token FROM {ledger} WHERE pipeline = ? AND file_hash = ?",
                    (request.pipeline, request.file_hash),
                ).fetchone()
                if found and found[0] > request.token:
                    raise LeaseLost(
                        f"write refused: claim token {request.token} is older than {found[0]} in {LEDGER_TABLE}"
                    )
                conn.execute(
                    f"INSERT INTO {ledger} (pipeline, file_hash, dest_table, claim_token, row_count, loaded_at) "
                    f"VALUES (?, ?, ?, ?, ?, {_NOW}) ON CONFLICT (pipeline, file_hash) DO UPDATE SET "
                    "claim_token = excluded.claim_token, row_count = excluded.row_count, "
                    "dest_table = excluded.dest_table, loaded_at = excluded.loaded_at",
                    (request.pipeline, request.file_hash, self.config.dest_table, request.token, rows.height),
                )
                conn.execute(f"DELETE FROM {self.table} WHERE {quote(HASH_COLUMN)} = ?", (request.file_hash,))
                for batch in rows.iter_slices(BATCH_ROWS):
                    conn.executemany(insert, batch.iter_rows())
                    checkpoint("mid_insert")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return rows.height

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
