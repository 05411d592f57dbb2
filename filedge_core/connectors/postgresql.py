"""The PostgreSQL destination: psycopg 3, ``COPY ... FROM STDIN``, fenced by the ledger row.

The table and its ledger ``_filedge_loads`` live in the same schema (``public`` when
``dest_table`` has none). Every row carries the file hash and the claim token it was written
under; see ``PostgresConnector.write`` for why that makes a zombie writer harmless."""

from __future__ import annotations

import contextlib
import itertools
import select
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import repeat
from typing import IO

import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..batches import Batch, read_ahead
from ..config import ColumnSpec, PipelineConfig
from ..dburl import mask
from ..errors import (
    ConfigError,
    DatabaseUnavailable,
    DataError,
    DestinationUnreachable,
    FiledgeError,
    LeaseLost,
    TransientError,
    first_line,
)
from ..faults import checkpoint
from ..identifiers import HASH_COLUMN
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

TOKEN_COLUMN = "_filedge_claim_token"
DEFAULT_SCHEMA = "public"
COPY_CHUNK_ROWS = 100_000  # rows encoded and sent per piece of the COPY stream
REJECT_SPOOL_BYTES = 8 << 20  # quarantined rows wait in memory up to this, then in a temp file
CONNECT_TIMEOUT_SECONDS = 10
# A writer stopped between two statements of its transaction would hold the ledger row lock
# forever; the server ends such a session after this long (from the guard on, our statements
# follow each other at once; the COPY itself counts as active, not idle).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# Before the guard the transaction holds no lock another writer needs, but it may wait for the
# file between two COPYs (a batch with no good row, a change of COPY format): a longer bound.
READING_IDLE_TIMEOUT_MS = 15 * 60_000
# pg_advisory_xact_lock key serializing filedge's DDL in a database ("filedge1" as a bigint).
DDL_LOCK_KEY = int.from_bytes(b"filedge1", "big")

SQL_TYPES = {
    "string": "TEXT",
    "int": "BIGINT",
    "float": "DOUBLE PRECISION",
    "bool": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMPTZ",
}
# Column types (as ``regtype::text`` spells them) an existing table may use for each column type.
ACCEPTED_TYPES = {
    "string": {"text", "character varying", "character"},
    "int": {"bigint", "integer", "smallint", "numeric"},
    "float": {"double precision", "real", "numeric"},
    "bool": {"boolean"},
    "date": {"date", "timestamp with time zone", "timestamp without time zone"},
    "datetime": {"timestamp with time zone", "timestamp without time zone"},
    "decimal": {"numeric"},
}
_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"
# PostgreSQL's binary dates and timestamps count from 2000-01-01 (days; microseconds, UTC).
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_MICROS = _PG_EPOCH_DAYS * 86_400_000_000
# The dates and timestamps PostgreSQL can hold (4714-11-24 BC to 5874897 AD; to 294276 AD), counted
# from 1970-01-01 like polars does. Timestamps cannot exceed it upwards in a polars Int64.
_PG_DATE_RANGE = (-2_440_588, 2_145_042_906)
_PG_MIN_MICROS = -211_813_488_000_000_000 + _PG_EPOCH_MICROS
_CONNECTION_LOST = ("08", "57P01", "57P02", "57P03")


def sql_type(column: ColumnSpec) -> str:
    """The PostgreSQL type filedge creates for a configured column."""
    if column.type == "decimal":
        return f"NUMERIC({column.precision}, {column.scale})"
    return SQL_TYPES[column.type]


def conninfo(url: str) -> str:
    """The libpq URL for ``postgresql://``, ``postgresql+psycopg://`` or ``postgres://`` URLs."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"connector.url: {mask(url)!r} is not a postgresql:// URL")
    try:
        params = conninfo_to_dict("postgresql://" + rest)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"connector.url: {mask(url)!r}: {mask(first_line(exc))}") from None
    defaults: dict[str, str | int] = {
        "application_name": "filedge",
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }
    missing = {key: value for key, value in defaults.items() if key not in params}
    return make_conninfo("postgresql://" + rest, **missing)


def _csv_frame(frame: pl.DataFrame, file_hash: str, token: int) -> pl.DataFrame:
    """The columns as COPY reads them: datetimes in UTC, then the file hash and claim token."""
    exprs = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            column = (
                column.dt.convert_time_zone("UTC") if dtype.time_zone else column.dt.replace_time_zone("UTC")
            )
        exprs.append(column)
    return frame.select(
        *exprs, pl.lit(file_hash).alias(HASH_COLUMN), pl.lit(token, pl.Int64).alias(TOKEN_COLUMN)
    )


def csv_chunks(
    frame: pl.DataFrame, file_hash: str, token: int, rows: int = COPY_CHUNK_ROWS
) -> Iterator[bytes]:
    """The frame as ``COPY ... (FORMAT csv)`` input, in pieces of ``rows`` rows.

    Polars writes NULL as an empty field and an empty string as ``""``, which is exactly how
    PostgreSQL's CSV format tells them apart."""
    for piece in frame.iter_slices(rows):
        yield (
            _csv_frame(piece, file_hash, token)
            .write_csv(include_header=False, datetime_format=_DATETIME_FORMAT)
            .encode()
        )


def binary_plan(frame: pl.DataFrame, table_types: dict[str, str]) -> tuple[list[str], list[pl.Expr]] | None:
    """How to send ``frame`` in binary COPY format: psycopg types and polars expressions.

    Binary COPY needs each value in its column's exact type, so this handles the types filedge
    creates and returns None for anything else (an existing table with, say, NUMERIC: CSV it is).
    Dates and datetimes go as the integers PostgreSQL stores (days, microseconds since
    2000-01-01 UTC), computed by polars: making a Python date or datetime per value would cost
    more than the rest of the COPY. A date or datetime PostgreSQL cannot hold also means CSV, so
    that the server reports it (the integers would wrap silently)."""
    if not _within_postgres_range(frame):
        return None
    types: list[str] = []
    exprs: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        kind, column = table_types.get(name), pl.col(name)
        if kind == "text" and dtype == pl.String:
            pair = ("text", column)
        elif kind == "bigint" and dtype.is_integer():
            pair = ("int8", column.cast(pl.Int64))
        elif kind == "double precision" and dtype.is_float():
            pair = ("float8", column.cast(pl.Float64))
        elif kind == "boolean" and dtype == pl.Boolean:
            pair = ("bool", column)
        elif kind == "date" and dtype == pl.Date:
            pair = ("int4", column.cast(pl.Int32) - _PG_EPOCH_DAYS)
        elif kind == "numeric" and isinstance(dtype, pl.Decimal):
            pair = ("numeric", column)
        elif kind == "timestamp with time zone" and isinstance(dtype, pl.Datetime):
            # epoch() counts from 1970-01-01 UTC; a naive datetime is taken as UTC.
            pair = ("int8", column.dt.epoch("us") - _PG_EPOCH_MICROS)
        else:
            return None
        types.append(pair[0])
        exprs.append(pair[1])
    return types, exprs


def _within_postgres_range(frame: pl.DataFrame) -> bool:
    """Whether every date and datetime of ``frame`` is one PostgreSQL can store."""
    checks = []
    for name, dtype in frame.schema.items():
        if dtype == pl.Date:
            days = pl.col(name).cast(pl.Int64)
            checks.append(((days < _PG_DATE_RANGE[0]) | (days > _PG_DATE_RANGE[1])).any())
        elif isinstance(dtype, pl.Datetime):
            checks.append((pl.col(name).dt.epoch("us") < _PG_MIN_MICROS).any())
    return not checks or not any(frame.select(checks).row(0))


# Connection failures worth waiting out: no answer, or a server that is starting or stopping.
# Anything else the server says while refusing (no such role or database, bad password) is final.
_PASSING_REFUSALS = ("the database system is", "too many clients", "too many connections", "remaining connection slots")


def _worth_retrying(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) and (
        "FATAL:" not in text or any(phrase in text for phrase in _PASSING_REFUSALS)
    )


def _connect_patiently(info: str, patience_s: float) -> psycopg.Connection:
    """``psycopg.connect``, retried with backoff for ``patience_s`` while the server is away."""
    if patience_s <= 0:
        return psycopg.connect(info, autocommit=True)
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    for attempt in Retrying(
        retry=retry_if_exception(_worth_retrying),
        stop=stop_after_delay(patience_s),
        wait=wait_exponential(multiplier=0.1, max=2),
        reraise=True,
    ):
        with attempt:
            return psycopg.connect(info, autocommit=True)
    raise AssertionError("unreachable")  # pragma: no cover -- Retrying re-raises the last error


class _Superseded(Exception):
    """A newer snapshot is loaded already (``replace``): this write rolls back, writing nothing."""

    def __init__(self, file_hash: str) -> None:
        super().__init__(file_hash)
        self.file_hash = file_hash


class PostgresConnector:
    """Writes one file per transaction into a PostgreSQL table with ``COPY``."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.display_url = mask(config.connector.url)
        self._conninfo = conninfo(config.connector.url)
        schema, _, name = config.dest_table.rpartition(".")
        self.schema = schema or DEFAULT_SCHEMA
        self.name = name
        self.table = sql.Identifier(self.schema, name)
        self.ledger = sql.Identifier(self.schema, LEDGER_TABLE)
        self._conn: psycopg.Connection | None = None
        self._table_types: dict[str, str] | None = None  # the table's column types, once known
        self._checkpoint_due = False

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and self._closed_while_idle():
            self._drop_connection()  # reconnect (patiently) rather than fail the next file with it
        if self._conn is None:
            try:
                conn = _connect_patiently(self._conninfo, self.config.connector.connect_retry_seconds)
            except psycopg.Error as exc:
                raise DestinationUnreachable(
                    f"destination {self.display_url}: {mask(first_line(exc))}"
                ) from None
            self._conn = conn
            try:
                with self._errors():
                    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                    # UTC: a date loaded into a TIMESTAMPTZ column of an existing table is midnight UTC.
                    conn.execute("SET TimeZone = 'UTC'")
                    conn.execute(
                        sql.SQL("SET idle_in_transaction_session_timeout = {}").format(
                            sql.Literal(IDLE_IN_TRANSACTION_TIMEOUT_MS)
                        )
                    )
            except FiledgeError:
                self._drop_connection()
                raise
        return self._conn

    def _closed_while_idle(self) -> bool:
        """Whether the server ended an idle connection (a restart, pg_terminate_backend, an
        idle timeout): an idle session has nothing to read unless the server said goodbye."""
        conn = self._conn
        if conn is None or conn.broken or conn.closed:
            return True
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return False
        try:
            readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
        except (OSError, ValueError, psycopg.OperationalError):
            return True
        return bool(readable)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn psycopg errors into filedge's: unreachable, data, or transient."""
        try:
            yield
        except FiledgeError:
            raise
        except psycopg.Error as exc:
            lost = self._conn is None or self._conn.broken or self._conn.closed
            if lost:
                self._drop_connection()
            raise self._classify(exc, lost) from None

    def _classify(self, exc: psycopg.Error, lost: bool) -> FiledgeError:
        detail = first_line(exc)
        context = getattr(exc.diag, "context", None)
        if context and isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            detail += f" ({context.strip().splitlines()[0]})"
        message = f"destination {self.display_url}: {mask(detail)}"
        state = exc.sqlstate or ""
        if lost or (
            isinstance(exc, psycopg.OperationalError) and (not state or state.startswith(_CONNECTION_LOST))
        ):
            return DatabaseUnavailable(message)
        if isinstance(exc, psycopg.errors.InvalidBinaryRepresentation):
            # Binary COPY was planned for column types the table no longer has (altered since
            # prepare): not the file's fault. The next attempt reads the types again.
            self._table_types = None
            return TransientError(message)
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            return DataError(message)
        return TransientError(message)

    # -- schema ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the schema, ledger and table if missing (serialized by an advisory lock); check fit."""
        conn = self._connection()
        with self._errors(), conn.transaction():
            # CREATE ... IF NOT EXISTS still races with a concurrent creator (unique violation
            # in the catalog): one DDL transaction at a time per database. The wait is bounded:
            # a holder stopped mid-prepare (SIGSTOP, a hung client) is an error, not a hang.
            conn.execute("SET LOCAL lock_timeout = '60s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            if not self._exists(LEDGER_TABLE):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (pipeline TEXT NOT NULL, file_hash TEXT NOT NULL, "
                        "dest_table TEXT NOT NULL, claim_token BIGINT NOT NULL, row_count BIGINT NOT NULL, "
                        "loaded_at TIMESTAMPTZ NOT NULL DEFAULT now(), file_order TEXT, "
                        "PRIMARY KEY (pipeline, file_hash))"
                    ).format(self.ledger)
                )
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (dest_table, pipeline)").format(
                        sql.Identifier(f"ix_{LEDGER_TABLE}_dest_table"), self.ledger
                    )
                )
            if "file_order" not in (self._columns(LEDGER_TABLE) or {}):  # from before write_mode: replace
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS file_order TEXT").format(self.ledger)
                )
            existing = self._columns(self.name)
            if existing is None:
                defs = [
                    sql.SQL("{} {}").format(sql.Identifier(c.dest), sql.SQL(sql_type(c)))
                    for c in self.config.columns
                ]
                defs.append(sql.SQL('{} TEXT COLLATE "C" NOT NULL').format(sql.Identifier(HASH_COLUMN)))
                defs.append(sql.SQL("{} BIGINT NOT NULL").format(sql.Identifier(TOKEN_COLUMN)))
                if self.config.write_mode == "upsert":
                    defs.append(sql.SQL('{} TEXT COLLATE "C" NOT NULL').format(sql.Identifier(ORDER_COLUMN)))
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(self.table, sql.SQL(", ").join(defs)))
                existing = self._columns(self.name)
            else:
                self._check_fits(existing)
            self._table_types = existing
            index = f"ix_{self.name}{HASH_COLUMN}"[:63]  # PostgreSQL's identifier length
            if not self._exists(index):
                # Only when missing: even with IF NOT EXISTS, CREATE INDEX waits for every open
                # write on the table (a stopped zombie's COPY included).
                # The token as second key lets the delete of older rows skip the rows just copied.
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})").format(
                        sql.Identifier(index),
                        self.table,
                        sql.Identifier(HASH_COLUMN),
                        sql.Identifier(TOKEN_COLUMN),
                    )
                )
            if self.config.write_mode == "upsert":
                self._ensure_key_index()
            if self.config.on_error == "quarantine":
                self._ensure_rejected_table()
            self._check_owner()

    def _ensure_key_index(self) -> None:
        """``upsert`` merges on a unique index over exactly the key columns; made if missing."""
        assert self._conn is not None
        regclass = self.table.as_string(self._conn)
        found = self._conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL "
            "AND i.indexprs IS NULL GROUP BY i.indexrelid",
            (regclass,),
        ).fetchall()
        if any(sorted(row[0]) == sorted(self.config.key) for row in found):
            return
        index = f"ux_{self.name}_key"[:63]
        try:
            with self._conn.transaction():
                self._conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
                        sql.Identifier(index), self.table, sql.SQL(", ").join(map(sql.Identifier, self.config.key))
                    )
                )
        except psycopg.errors.UniqueViolation:
            raise ConfigError(
                f"key: table {self.config.dest_table!r} already holds rows with the same "
                f"({', '.join(self.config.key)}), so it cannot be upserted on that key"
            ) from None

    def _ensure_rejected_table(self) -> None:
        assert self._conn is not None
        name = self._rejected_name
        existing = self._columns(name)
        table = sql.Identifier(self.schema, name)
        if existing is None:
            self._conn.execute(
                sql.SQL(
                    'CREATE TABLE {} ({} TEXT COLLATE "C" NOT NULL, row_number BIGINT, line_number BIGINT, '
                    "column_name TEXT, raw_value TEXT, reason TEXT NOT NULL, {} BIGINT NOT NULL)"
                ).format(table, sql.Identifier(HASH_COLUMN), sql.Identifier(TOKEN_COLUMN))
            )
            self._conn.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"ix_{name}{HASH_COLUMN}"[:63]), table, sql.Identifier(HASH_COLUMN)
                )
            )
            return
        for column in (HASH_COLUMN, TOKEN_COLUMN, *REJECT_COLUMNS):
            if column not in existing:
                raise ConfigError(
                    f"on_error: table {self.config.rejected_table!r} already exists without column "
                    f"{column!r}; it cannot hold quarantined rows"
                )

    def _exists(self, name: str) -> bool:
        """Whether the relation (table or index) ``schema.name`` exists."""
        assert self._conn is not None
        regclass = sql.Identifier(self.schema, name).as_string(self._conn)
        found = self._conn.execute("SELECT to_regclass(%s) IS NOT NULL", (regclass,)).fetchone()
        return bool(found and found[0])

    def _columns(self, name: str) -> dict[str, str] | None:
        """Column name -> type of ``schema.name``; None if there is no such table."""
        assert self._conn is not None
        regclass = sql.Identifier(self.schema, name).as_string(self._conn)
        found = self._conn.execute("SELECT to_regclass(%s)::oid", (regclass,)).fetchone()
        if found is None or found[0] is None:
            return None
        rows = self._conn.execute(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (found[0],),
        ).fetchall()
        return {str(column): str(kind) for column, kind in rows}

    def _check_fits(self, existing: dict[str, str]) -> None:
        table = self.config.dest_table
        for column in (HASH_COLUMN, TOKEN_COLUMN):
            if column not in existing:
                raise ConfigError(
                    f"dest_table: table {table!r} already exists and has no {column} column "
                    "(it was not created by filedge's postgresql connector); choose another dest_table"
                )
        if self.config.write_mode == "upsert" and ORDER_COLUMN not in existing:
            raise ConfigError(
                f"write_mode: table {table!r} was not created for upsert (it has no {ORDER_COLUMN} "
                "column); choose another dest_table"
            )
        for spec in self.config.columns:
            kind = existing.get(spec.dest)
            if kind is None:
                raise ConfigError(f"columns: table {table!r} already exists without column {spec.dest!r}")
            if kind not in ACCEPTED_TYPES[spec.type]:
                raise ConfigError(
                    f"columns: column {spec.dest!r} of table {table!r} is {kind}, "
                    f"which cannot hold type {spec.type!r} (expected {sql_type(spec)})"
                )

    def _check_owner(self) -> None:
        assert self._conn is not None
        row = self._conn.execute(
            sql.SQL("SELECT pipeline FROM {} WHERE dest_table = %s AND pipeline <> %s LIMIT 1").format(
                self.ledger
            ),
            (self.config.dest_table, self.config.name),
        ).fetchone()
        if row:
            raise shared_table_error(self.config.dest_table, row[0])

    # -- the write ------------------------------------------------------------------------

    def write(self, request: FileWrite) -> WriteResult:
        """Write one file's rows in one READ COMMITTED transaction, as the write mode says.

        The steps, in this order (``append``; the other modes below):

        a. read the ledger row without locking it: a token older than the stored one is
           refused (``LeaseLost``) before any row is sent;
        b. ``COPY`` all rows, each tagged with the file hash and this claim token;
        c. the guard: upsert the ledger row ``(pipeline, file_hash)`` with this token, only where
           the stored token is not newer (``ON CONFLICT ... DO UPDATE ... WHERE``); no row
           returned means a newer claim has committed: roll back, ``LeaseLost``;
        d. delete the file's rows that carry any other token;
        e. commit.

        Why this order: a zombie (a worker whose lease was reclaimed, e.g. SIGSTOPped) stopped
        anywhere in (a)-(b) holds no lock a newer writer needs: its uncommitted rows are
        invisible and carry its own token. So the newer writer copies, takes the ledger row in
        (c), deletes every other token's committed rows in (d) and commits. When the zombie
        resumes, its (c) sees the newer token and refuses it; its rows are rolled back. Were
        the guard taken first, a stopped zombie would hold the ledger row lock and block every
        newer writer of that file for as long as it is stopped.

        Once (c) holds the ledger row lock, every writer of this file that committed before is
        visible to (d) (READ COMMITTED takes a new snapshot per statement), and a later writer
        waits in its (c) until we commit, then deletes our rows in its (d). So the table holds
        exactly one writer's rows per file: the one with the newest token, never a duplicate.

        A write repeated under the same token (the ledger already holds it) also removes the
        rows the earlier write committed under that token: those are the ones not inserted by
        this transaction.

        ``upsert`` copies into a private staging table in (b), and in (d) merges it on the key
        (``INSERT ... ON CONFLICT``), the file's last row per key winning. ``replace`` takes a
        per-table advisory lock after (b), refuses (writes nothing) if a newer snapshot is
        loaded, and in (d) deletes every row this transaction did not insert. Quarantined rows
        are copied in (b) like the others, and the file's earlier rejects deleted in (d)."""
        conn = self._connection()
        key = (request.pipeline, request.file_hash)
        mode = self.config.write_mode
        self._checkpoint_due = True
        # The first batch is read before the transaction opens: a file that fits in one batch
        # (most) is read and validated without a transaction waiting on it.
        batches = request.batches()
        first = next(batches, None)
        try:
            with self._errors(), conn.transaction():
                cur = conn.cursor()
                cur.execute(
                    sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
                        sql.Literal(READING_IDLE_TIMEOUT_MS)
                    )
                )
                # (a) early, non-locking check
                found = cur.execute(
                    sql.SQL("SELECT claim_token FROM {} WHERE pipeline = %s AND file_hash = %s").format(
                        self.ledger
                    ),
                    key,
                ).fetchone()
                if found and found[0] > request.token:
                    raise self._refused(request.token, found[0])
                rewrite = found is not None and found[0] == request.token
                if mode == "replace":
                    self._check_snapshot(cur, request)  # early: an old snapshot is not even read
                # (b) all rows, tagged (upsert: into a private staging table first)
                target = self._stage(cur) if mode == "upsert" else self.table
                rows = self._copy(cur, target, itertools.chain([first] if first else [], batches), request)
                cur.execute(
                    sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
                        sql.Literal(IDLE_IN_TRANSACTION_TIMEOUT_MS)
                    )
                )
                if mode == "replace":
                    # One replacing writer at a time per table; its snapshot must still be the newest.
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"filedge:{self.config.dest_table}",))
                    self._check_snapshot(cur, request)
                # (c) the guard
                guard = cur.execute(
                    sql.SQL(
                        "INSERT INTO {} AS l (pipeline, file_hash, dest_table, claim_token, row_count, loaded_at,"
                        " file_order) VALUES (%s, %s, %s, %s, %s, now(), %s) ON CONFLICT (pipeline, file_hash) "
                        "DO UPDATE SET claim_token = excluded.claim_token, row_count = excluded.row_count, "
                        "dest_table = excluded.dest_table, loaded_at = excluded.loaded_at, "
                        "file_order = excluded.file_order "
                        "WHERE l.claim_token <= excluded.claim_token RETURNING 1"
                    ).format(self.ledger),
                    (*key, self.config.dest_table, request.token, rows, request.file_order or None),
                ).fetchone()
                if guard is None:
                    stored = cur.execute(
                        sql.SQL("SELECT claim_token FROM {} WHERE pipeline = %s AND file_hash = %s").format(
                            self.ledger
                        ),
                        key,
                    ).fetchone()
                    raise self._refused(request.token, stored[0] if stored else None)
                # (d) what the mode replaces
                if mode == "append":
                    self._delete_other_writes(cur, request, rewrite)
                elif mode == "replace":
                    cur.execute(
                        sql.SQL("DELETE FROM {} WHERE NOT (xmin = pg_current_xact_id()::xid)").format(self.table)
                    )
                    cur.execute(
                        sql.SQL(
                            "UPDATE {} SET row_count = 0 WHERE pipeline = %s AND dest_table = %s "
                            "AND file_hash <> %s AND row_count <> 0"
                        ).format(self.ledger),
                        (request.pipeline, self.config.dest_table, request.file_hash),
                    )
                else:
                    rows = self._merge(cur, target, request)
                    cur.execute(
                        sql.SQL("UPDATE {} SET row_count = %s WHERE pipeline = %s AND file_hash = %s").format(
                            self.ledger
                        ),
                        (rows, *key),
                    )
                if self.config.on_error == "quarantine":  # replace: only the snapshot's rejects stay
                    mine = sql.SQL("NOT (xmin = pg_current_xact_id()::xid)")
                    if mode == "replace":
                        cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(self._rejected, mine))
                    else:
                        cur.execute(
                            sql.SQL("DELETE FROM {} WHERE {} = %s AND {}").format(
                                self._rejected, sql.Identifier(HASH_COLUMN), mine
                            ),
                            (request.file_hash,),
                        )
            # (e) committed by leaving the transaction block
        except _Superseded as newer:
            return WriteResult(0, newer.file_hash)
        return WriteResult(rows)

    @property
    def _rejected_name(self) -> str:
        """The rejects table's name in ``self.schema``."""
        return self.config.rejected_table.rpartition(".")[2]

    @property
    def _rejected(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self._rejected_name)

    def _delete_other_writes(self, cur: psycopg.Cursor, request: FileWrite, rewrite: bool) -> None:
        """Every other writer's rows of this file (two ranges, so the index skips ours)."""
        hash_is = sql.SQL("{} = %s").format(sql.Identifier(HASH_COLUMN))
        token = sql.Identifier(TOKEN_COLUMN)
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} AND ({} < %s OR {} > %s)").format(self.table, hash_is, token, token),
            (request.file_hash, request.token, request.token),
        )
        if rewrite:
            cur.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE {} AND {} = %s AND NOT (xmin = pg_current_xact_id()::xid)"
                ).format(self.table, hash_is, token),
                (request.file_hash, request.token),
            )

    def _check_snapshot(self, cur: psycopg.Cursor, request: FileWrite) -> None:
        """``replace``: raise ``_Superseded`` if a newer snapshot has been loaded already."""
        found = cur.execute(
            sql.SQL(
                "SELECT file_hash FROM {} WHERE pipeline = %s AND dest_table = %s AND file_hash <> %s "
                "AND file_order > %s ORDER BY file_order DESC LIMIT 1"
            ).format(self.ledger),
            (request.pipeline, self.config.dest_table, request.file_hash, request.file_order),
        ).fetchone()
        if found is not None:
            raise _Superseded(str(found[0]))

    def _stage(self, cur: psycopg.Cursor) -> sql.Composable:
        """A private table for an upsert's rows, in file order; dropped at commit."""
        stage = sql.Identifier("_filedge_stage")
        cur.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(stage))
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stage,
                sql.SQL(", ").join(
                    sql.Identifier(n) for n in [*(c.dest for c in self.config.columns), HASH_COLUMN, TOKEN_COLUMN]
                ),
                self.table,
            )
        )
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN _filedge_seq BIGINT GENERATED ALWAYS AS IDENTITY").format(stage))
        return stage

    def _merge(self, cur: psycopg.Cursor, stage: sql.Composable, request: FileWrite) -> int:
        """Merge the staged rows on the key: the file's last row per key wins, and no row an
        newer file wrote is overwritten. Rows of this file in the table afterwards."""
        names = [*(c.dest for c in self.config.columns), HASH_COLUMN, TOKEN_COLUMN]
        keys = sql.SQL(", ").join(map(sql.Identifier, self.config.key))
        columns = sql.SQL(", ").join(map(sql.Identifier, names))
        order = sql.Identifier(ORDER_COLUMN)
        updates = sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n in [*names, ORDER_COLUMN]
            if n not in self.config.key
        )
        # Sorted by key: concurrent merges lock rows in the same order (no deadlock cycles).
        cur.execute(
            sql.SQL(
                "INSERT INTO {} AS t ({}, {}) SELECT * FROM (SELECT DISTINCT ON ({}) {}, %s::text FROM {} "
                "ORDER BY {}, _filedge_seq DESC) s ORDER BY {} "
                "ON CONFLICT ({}) DO UPDATE SET {} WHERE t.{} <= excluded.{}"
            ).format(self.table, columns, order, keys, columns, stage, keys, keys, keys, updates, order, order),
            (request.file_order,),
        )
        found = cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(self.table, sql.Identifier(HASH_COLUMN)),
            (request.file_hash,),
        ).fetchone()
        return int(found[0]) if found else 0

    def _copy(
        self, cur: psycopg.Cursor, table: sql.Composable, batches: Iterable[Batch], request: FileWrite
    ) -> int:
        """COPY every batch's rows, each with its hash and token; the rows sent.

        One COPY stays open across batches, and the next batch is read and validated by a
        background thread (``read_ahead``) while this one is encoded and sent: the server
        stores, polars parses and Python encodes at the same time. Binary format when the types allow (it is the faster of
        the two, see bench/bench_pg_copy.py), else CSV; a batch that needs the other format
        starts a new COPY. Rejects are spooled and copied after the rows (one COPY at a time)."""
        if self._table_types is None:
            self._table_types = self._columns(self.name)  # None again if the table is gone
        rows = 0
        rejects = tempfile.SpooledTemporaryFile(max_size=REJECT_SPOOL_BYTES)
        with rejects, ExitStack() as open_copy:
            current: tuple[object, psycopg.Copy] | None = None
            for batch in read_ahead(batches):
                frame = batch.frame
                if batch.rejects.height:
                    rejects.write(self._reject_csv(batch.rejects, request))
                if not frame.height:
                    continue
                plan = binary_plan(frame, self._table_types or {})
                kind = "csv" if plan is None else tuple(plan[0])
                if current is None or current[0] != kind:
                    open_copy.close()  # ends the COPY of the previous batches
                    current = (kind, open_copy.enter_context(self._start_copy(cur, table, frame, plan)))
                self._send(current[1], frame, plan, request)
                rows += frame.height
            open_copy.close()
            if rejects.tell():
                rejects.seek(0)
                self._copy_rejects(cur, rejects)
        return rows

    def _start_copy(
        self, cur: psycopg.Cursor, table: sql.Composable, frame: pl.DataFrame, plan: tuple[list[str], list[pl.Expr]] | None
    ) -> "contextlib.AbstractContextManager[psycopg.Copy]":
        names = sql.SQL(", ").join(sql.Identifier(n) for n in [*frame.columns, HASH_COLUMN, TOKEN_COLUMN])
        kind = "csv" if plan is None else "binary"
        copy = cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(table, names, sql.SQL(kind)))
        if plan is None:
            return copy

        @contextlib.contextmanager
        def typed() -> Iterator[psycopg.Copy]:
            with copy as stream:
                stream.set_types([*plan[0], "text", "int8"])
                yield stream

        return typed()

    def _send(
        self, stream: psycopg.Copy, frame: pl.DataFrame, plan: tuple[list[str], list[pl.Expr]] | None, request: FileWrite
    ) -> None:
        if plan is None:
            for chunk in csv_chunks(frame, request.file_hash, request.token, COPY_CHUNK_ROWS):
                stream.write(chunk)
                self._mid_insert()
            return
        write_row = stream.write_row
        for piece in frame.iter_slices(COPY_CHUNK_ROWS):
            columns = [series.to_list() for series in piece.select(plan[1]).iter_columns()]
            for row in zip(*columns, repeat(request.file_hash), repeat(request.token)):
                write_row(row)
            self._mid_insert()

    @staticmethod
    def _reject_csv(rejects: pl.DataFrame, request: FileWrite) -> bytes:
        return (
            rejects.select(
                pl.lit(request.file_hash).alias(HASH_COLUMN),
                *REJECT_COLUMNS,
                pl.lit(request.token, pl.Int64).alias(TOKEN_COLUMN),
            )
            .write_csv(include_header=False)
            .encode()
        )

    def _copy_rejects(self, cur: psycopg.Cursor, spool: IO[bytes]) -> None:
        names = [HASH_COLUMN, *REJECT_COLUMNS, TOKEN_COLUMN]
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            self._rejected, sql.SQL(", ").join(map(sql.Identifier, names))
        )
        with cur.copy(statement) as stream:
            while piece := spool.read(1 << 20):
                stream.write(piece)

    def _mid_insert(self) -> None:
        if self._checkpoint_due:  # once per write: the crash tests stop it part-way
            self._checkpoint_due = False
            checkpoint("mid_insert")

    def _refused(self, token: int, stored: int | None) -> LeaseLost:
        older_than = stored if stored is not None else "the stored one"
        return LeaseLost(
            f"write refused: claim token {token} is older than {older_than} in {self.schema}.{LEDGER_TABLE}", stored
        )

    # -- verify ---------------------------------------------------------------------------

    def inventory(self) -> Inventory:
        """The ledger rows of this pipeline and table, and rows per hash of the table and its
        rejects table, in one REPEATABLE READ, READ ONLY transaction (one snapshot)."""
        conn = self._connection()
        with self._errors(), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            ledger = {}
            if self._exists(LEDGER_TABLE):
                found = conn.execute(
                    sql.SQL(
                        "SELECT file_hash, claim_token, row_count, file_order FROM {} "
                        "WHERE pipeline = %s AND dest_table = %s"
                    ).format(self.ledger),
                    (self.config.name, self.config.dest_table),
                )
                ledger = {h: LedgerEntry(t, n, o) for h, t, n, o in found}
            rows = self._rows_per_hash(self.name, "*") or {}
            rejects = self._rows_per_hash(self._rejected_name, REJECTED_ROWS) or {}
        return Inventory(ledger, rows, rejects)

    def _rows_per_hash(self, name: str, counted: str, file_hash: str | None = None) -> dict[str, int] | None:
        """``count(<counted>)`` per file hash of ``schema.name`` (only ``file_hash``'s, if given),
        in one ``GROUP BY``; None if there is no such table."""
        assert self._conn is not None
        columns = self._columns(name)
        if columns is None:
            return None
        if HASH_COLUMN not in columns:
            raise ConfigError(
                f"dest_table: table {self.schema}.{name} has no {HASH_COLUMN} column (it was not created by filedge)"
            )
        hashed = sql.Identifier(HASH_COLUMN)
        where, params = (sql.SQL(" WHERE {} = %s").format(hashed), (file_hash,)) if file_hash is not None else (sql.SQL(""), ())
        found = self._conn.execute(
            sql.SQL("SELECT {}, count({}) FROM {}{} GROUP BY {}").format(
                hashed, sql.SQL(counted), sql.Identifier(self.schema, name), where, hashed
            ),
            params,
        )
        return {h: int(n) for h, n in found}

    def stored_rows(self, file_hash: str) -> StoredRows:
        self._connection()
        with self._errors():
            rows = self._rows_per_hash(self.name, "*", file_hash)
            rejects = self._rows_per_hash(self._rejected_name, REJECTED_ROWS, file_hash)
        return StoredRows(*(None if found is None else found.get(file_hash, 0) for found in (rows, rejects)))

    def close(self) -> None:
        self._drop_connection()
