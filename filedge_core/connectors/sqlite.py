"""The SQLite destination: ``BEGIN IMMEDIATE``, ledger guard, delete, ``executemany`` insert."""

from __future__ import annotations

import itertools
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from ..config import PipelineConfig
from ..dburl import mask, sqlite_path
from ..errors import ConfigError, DatabaseUnavailable, DestinationUnreachable, LeaseLost, TransientError
from ..faults import checkpoint
from ..identifiers import HASH_COLUMN, quote
from .base import (
    LEDGER_TABLE,
    ORDER_COLUMN,
    REJECT_COLUMNS,
    REJECTED_ROWS,
    FileWrite,
    Inventory,
    LedgerEntry,
    StoredRows,
    WriteResult,
    shared_table_error,
)

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
                raise DestinationUnreachable(
                    f"destination {self.display_url}: directory {Path(self.path).parent} does not exist"
                )
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            except sqlite3.Error as exc:
                raise DestinationUnreachable(f"destination {self.display_url}: {exc}") from None
            with self._errors():
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
                    "file_order TEXT, PRIMARY KEY (pipeline, file_hash))"
                )
                ledger_columns = self._existing_columns(conn, LEDGER_TABLE) or {}
                if "file_order" not in ledger_columns:  # a ledger from before write_mode: replace
                    conn.execute(f"ALTER TABLE {quote(LEDGER_TABLE)} ADD COLUMN file_order TEXT")
                existing = self._existing_columns(conn)
                if existing is None:
                    defs = ", ".join(f"{quote(c.dest)} {SQL_TYPES[c.type]}" for c in columns)
                    if self.config.write_mode == "upsert":
                        defs += f", {quote(ORDER_COLUMN)} TEXT NOT NULL"
                    conn.execute(f"CREATE TABLE {self.table} ({defs}, {quote(HASH_COLUMN)} TEXT NOT NULL)")
                else:
                    self._check_fits(existing)
                *schema, name = self.config.dest_table.split(".")
                prefix = f"{quote(schema[0])}." if schema else ""
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {prefix}{quote(f'ix_{name}{HASH_COLUMN}')} "
                    f"ON {quote(name)} ({quote(HASH_COLUMN)})"
                )
                if self.config.write_mode == "upsert":
                    self._ensure_key_index(conn)
                if self.config.on_error == "quarantine":
                    self._ensure_rejected_table(conn)
                self._check_owner(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _split(self, table: str | None = None) -> tuple[str, str]:
        """(quoted schema prefix or "", bare name) of ``table`` (default: the destination)."""
        *schema, name = (table or self.config.dest_table).split(".")
        return (f"{quote(schema[0])}." if schema else ""), name

    def _existing_columns(self, conn: sqlite3.Connection, table: str | None = None) -> dict[str, str] | None:
        """Column name (lower case) -> declared type; None if there is no such table."""
        prefix, name = self._split(table)
        rows = conn.execute(f"PRAGMA {prefix}table_info({quote(name)})").fetchall()
        return {row[1].lower(): row[2] or "" for row in rows} if rows else None

    def _ensure_key_index(self, conn: sqlite3.Connection) -> None:
        """``upsert`` merges on a unique index over exactly the key columns; made if missing."""
        prefix, name = self._split()
        wanted = [k.lower() for k in self.config.key]
        for index in conn.execute(f"PRAGMA {prefix}index_list({quote(name)})").fetchall():
            if not index[2] or index[4] != 0:  # not unique, or partial
                continue
            columns = [r[2].lower() for r in conn.execute(f"PRAGMA {prefix}index_info({quote(index[1])})")]
            if sorted(columns) == sorted(wanted):
                return
        index_name = f"ux_{name}_key"[:63]
        keys = ", ".join(quote(k) for k in self.config.key)
        try:
            conn.execute(f"CREATE UNIQUE INDEX {prefix}{quote(index_name)} ON {quote(name)} ({keys})")
        except sqlite3.IntegrityError:
            raise ConfigError(
                f"key: table {self.config.dest_table!r} already holds rows with the same "
                f"({', '.join(self.config.key)}), so it cannot be upserted on that key"
            ) from None

    def _ensure_rejected_table(self, conn: sqlite3.Connection) -> None:
        table = self.config.rejected_table
        existing = self._existing_columns(conn, table)
        if existing is None:
            conn.execute(
                f"CREATE TABLE {quote(table)} ({quote(HASH_COLUMN)} TEXT NOT NULL, row_number INTEGER, "
                "line_number INTEGER, column_name TEXT, raw_value TEXT, reason TEXT NOT NULL)"
            )
            prefix, name = self._split(table)
            conn.execute(
                f"CREATE INDEX {prefix}{quote(f'ix_{name}{HASH_COLUMN}'[:63])} ON {quote(name)} ({quote(HASH_COLUMN)})"
            )
            return
        for column in (HASH_COLUMN, *REJECT_COLUMNS):
            if column.lower() not in existing:
                raise ConfigError(
                    f"on_error: table {table!r} already exists without column {column!r}; "
                    "it cannot hold quarantined rows"
                )

    def _check_fits(self, existing: dict[str, str]) -> None:
        if HASH_COLUMN.lower() not in existing:
            raise ConfigError(
                f"dest_table: table {self.config.dest_table!r} already exists and has no {HASH_COLUMN} column "
                "(it was not created by filedge); choose another dest_table"
            )
        if self.config.write_mode == "upsert" and ORDER_COLUMN.lower() not in existing:
            raise ConfigError(
                f"write_mode: table {self.config.dest_table!r} was not created for upsert (it has no "
                f"{ORDER_COLUMN} column); choose another dest_table"
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

    def write(self, request: FileWrite) -> WriteResult:
        """One ``BEGIN IMMEDIATE`` transaction: refuse a stale token, then write as the mode says.

        The first batch is read before the write lock is taken, so a file that fits in one
        batch (most files) is read, hashed and validated without holding it."""
        conn = self._connection()
        mode = self.config.write_mode
        batches = request.batches()
        first = next(batches, None)
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._stored_token(conn, request)
                if stored is not None and stored > request.token:
                    raise LeaseLost(
                        f"write refused: claim token {request.token} is older than {stored} in {LEDGER_TABLE}",
                        stored,
                    )
                if mode == "replace":
                    newer = self._newer_snapshot(conn, request)
                    if newer is not None:
                        conn.execute("ROLLBACK")
                        return WriteResult(0, newer)
                    conn.execute(f"DELETE FROM {self.table}")
                elif mode == "append":
                    conn.execute(f"DELETE FROM {self.table} WHERE {quote(HASH_COLUMN)} = ?", (request.file_hash,))
                if self.config.on_error == "quarantine":  # replace: only the snapshot's rejects stay
                    rejected = quote(self.config.rejected_table)
                    if mode == "replace":
                        conn.execute(f"DELETE FROM {rejected}")
                    else:
                        conn.execute(f"DELETE FROM {rejected} WHERE {quote(HASH_COLUMN)} = ?", (request.file_hash,))
                rows = 0
                for batch in itertools.chain([first] if first is not None else [], batches):
                    rows += self._insert(conn, batch.frame, request)
                    if batch.rejects.height:
                        self._insert_rejects(conn, batch.rejects, request.file_hash)
                if mode == "upsert":
                    rows = conn.execute(
                        f"SELECT count(*) FROM {self.table} WHERE {quote(HASH_COLUMN)} = ?", (request.file_hash,)
                    ).fetchone()[0]
                self._record(conn, request, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return WriteResult(rows)

    def _stored_token(self, conn: sqlite3.Connection, request: FileWrite) -> int | None:
        found = conn.execute(
            f"SELECT claim_token FROM {quote(LEDGER_TABLE)} WHERE pipeline = ? AND file_hash = ?",
            (request.pipeline, request.file_hash),
        ).fetchone()
        return None if found is None else int(found[0])

    def _newer_snapshot(self, conn: sqlite3.Connection, request: FileWrite) -> str | None:
        """The hash of a snapshot loaded after this one would be (replace mode), if any."""
        found = conn.execute(
            f"SELECT file_hash FROM {quote(LEDGER_TABLE)} WHERE pipeline = ? AND dest_table = ? "
            "AND file_hash <> ? AND file_order > ? ORDER BY file_order DESC LIMIT 1",
            (request.pipeline, self.config.dest_table, request.file_hash, request.file_order),
        ).fetchone()
        return None if found is None else str(found[0])

    def _insert(self, conn: sqlite3.Connection, frame: pl.DataFrame, request: FileWrite) -> int:
        """Insert (or, for upsert, merge) one batch; the number of rows sent."""
        if not frame.height:
            return 0
        rows = _to_sqlite(frame, request.file_hash)
        if self.config.write_mode == "upsert":
            rows = rows.with_columns(pl.lit(request.file_order).alias(ORDER_COLUMN))
        names = rows.columns
        statement = (
            f"INSERT INTO {self.table} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        if self.config.write_mode == "upsert":
            keys = ", ".join(quote(k) for k in self.config.key)
            updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names if n not in self.config.key)
            order = quote(ORDER_COLUMN)
            statement += (
                f" ON CONFLICT ({keys}) DO UPDATE SET {updates} "
                f"WHERE excluded.{order} >= {self.table}.{order}"
            )
        for piece in rows.iter_slices(BATCH_ROWS):
            conn.executemany(statement, piece.iter_rows())
            checkpoint("mid_insert")
        return rows.height

    def _insert_rejects(self, conn: sqlite3.Connection, rejects: pl.DataFrame, file_hash: str) -> None:
        names = [HASH_COLUMN, *REJECT_COLUMNS]
        conn.executemany(
            f"INSERT INTO {quote(self.config.rejected_table)} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            rejects.select(pl.lit(file_hash).alias(HASH_COLUMN), *REJECT_COLUMNS).iter_rows(),
        )

    def _record(self, conn: sqlite3.Connection, request: FileWrite, rows: int) -> None:
        """The ledger row: this file, this token, its row count (and snapshot order)."""
        conn.execute(
            f"INSERT INTO {quote(LEDGER_TABLE)} (pipeline, file_hash, dest_table, claim_token, row_count, "
            f"loaded_at, file_order) VALUES (?, ?, ?, ?, ?, {_NOW}, ?) ON CONFLICT (pipeline, file_hash) "
            "DO UPDATE SET claim_token = excluded.claim_token, row_count = excluded.row_count, "
            "dest_table = excluded.dest_table, loaded_at = excluded.loaded_at, file_order = excluded.file_order",
            (
                request.pipeline, request.file_hash, self.config.dest_table, request.token, rows,
                request.file_order or None,
            ),
        )
        if self.config.write_mode == "replace":  # the other files' rows are gone from the table
            conn.execute(
                f"UPDATE {quote(LEDGER_TABLE)} SET row_count = 0 WHERE pipeline = ? AND dest_table = ? "
                "AND file_hash <> ? AND row_count <> 0",
                (request.pipeline, self.config.dest_table, request.file_hash),
            )

    def inventory(self) -> Inventory:
        """The ledger rows of this pipeline and table, and rows per hash of the table and its
        rejects table, in one read transaction (one snapshot). A missing file is not created."""
        if self.path != ":memory:" and not Path(self.path).exists():
            return Inventory({}, {}, {})
        conn = self._connection()
        with self._errors():
            conn.execute("BEGIN")
            try:
                ledger = {}
                if self._existing_columns(conn, LEDGER_TABLE) is not None:
                    found = conn.execute(
                        f"SELECT file_hash, claim_token, row_count, file_order FROM {quote(LEDGER_TABLE)} "
                        "WHERE pipeline = ? AND dest_table = ?",
                        (self.config.name, self.config.dest_table),
                    )
                    ledger = {h: LedgerEntry(t, n, o) for h, t, n, o in found}
                rows = self._rows_per_hash(conn, self.config.dest_table, "*") or {}
                rejects = self._rows_per_hash(conn, self.config.rejected_table, REJECTED_ROWS) or {}
            finally:
                conn.execute("COMMIT")
        return Inventory(ledger, rows, rejects)

    def _rows_per_hash(
        self, conn: sqlite3.Connection, table: str, counted: str, file_hash: str | None = None
    ) -> dict[str, int] | None:
        """``count(<counted>)`` per file hash of ``table`` (only ``file_hash``'s, if given), in
        one ``GROUP BY``; None if there is no such table."""
        existing = self._existing_columns(conn, table)
        if existing is None:
            return None
        if HASH_COLUMN.lower() not in existing:
            raise ConfigError(f"dest_table: table {table!r} has no {HASH_COLUMN} column (it was not created by filedge)")
        hashed = quote(HASH_COLUMN)
        where, params = (f" WHERE {hashed} = ?", (file_hash,)) if file_hash is not None else ("", ())
        found = conn.execute(f"SELECT {hashed}, count({counted}) FROM {quote(table)}{where} GROUP BY {hashed}", params)
        return {h: int(n) for h, n in found}

    def stored_rows(self, file_hash: str) -> StoredRows:
        if self.path == ":memory:" or not Path(self.path).is_file():
            return StoredRows(None, None)
        # Read only: opening the database must not create it, nor anything in it.
        uri = "file:" + urllib.parse.quote(str(Path(self.path).resolve())) + "?mode=ro"
        with self._errors():
            conn = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                rows = self._rows_per_hash(conn, self.config.dest_table, "*", file_hash)
                rejects = self._rows_per_hash(conn, self.config.rejected_table, REJECTED_ROWS, file_hash)
            finally:
                conn.close()
        return StoredRows(*(None if found is None else found.get(file_hash, 0) for found in (rows, rejects)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
