"""The audit table ``etl_file_audit`` and its state machine (docs/architecture.md).

Every transition is one conditional statement whose WHERE re-checks the expected state (and
the claim token where a worker holds the file); the affected row count says who won. Time is
always the audit database's clock, never a worker's."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from .dburl import mask, scheme, sqlalchemy_url, sqlite_path
from .errors import DatabaseUnavailable, UsageError, first_line

TABLE_NAME = "etl_file_audit"
ATTEMPTS_TABLE = "etl_file_attempts"
STAT_CACHE_TABLE = "etl_file_stat_cache"
_DDL_LOCK_KEY = int.from_bytes(b"fdaudit1", "big")  # pg_advisory_xact_lock key for the audit DDL


class FileState(str, enum.Enum):
    """A file's state; the values are the strings stored in the ``state`` column."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMMITTED = "COMMITTED"
    FAILED = "FAILED"


class ErrorKind(str, enum.Enum):
    """Why a file is FAILED (or was released); stored in ``error_kind``."""

    DATA = "data"  # terminal: the bytes will not change
    TRANSIENT = "transient"  # retried by later runs while attempts < retry_cap
    LOST = "lost"  # its workers died retry_cap times: terminal
    CHANGED = "changed"  # the file changed while read: released to PENDING


class Outcome(str, enum.Enum):
    """How an attempt ended; stored in ``etl_file_attempts.outcome`` (NULL while it runs)."""

    COMMITTED = "committed"
    FAILED = "failed"  # FAILED with a data or transient error
    RELEASED = "released"  # the file changed while read
    GIVEN_BACK = "given_back"  # the run was stopped: not charged
    LOST = "lost"  # the lease was reclaimed (stale, or its worker known dead)
    FENCED = "fenced"  # a lost worker came back and its write was refused


_TS = sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")

metadata = sa.MetaData()
audit_table = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("file_hash", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("previous_state", sa.String(16)),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("claim_token", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_at", _TS),
    sa.Column("committed_at", _TS),
    sa.Column("rows_written", sa.BigInteger()),
    sa.Column("rows_rejected", sa.BigInteger()),
    sa.Column("last_error", sa.Text()),
    sa.Column("error_kind", sa.String(16)),
    sa.Column("config_hash", sa.String(64)),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Index(f"ix_{TABLE_NAME}_pipeline_state", "pipeline", "state"),
    sa.Index(f"ix_{TABLE_NAME}_state_claimed_at", "state", "claimed_at"),
)
_t = audit_table.c

# The hash of each path as of its last (size, mtime, ctime, inode): unchanged files are not
# hashed again. A stale entry can only delay a file, never load wrong bytes: the runner
# re-hashes the bytes it loads.
stat_cache_table = sa.Table(
    STAT_CACHE_TABLE,
    metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("path", sa.Text(), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
    sa.Column("ctime_ns", sa.BigInteger(), nullable=False),
    sa.Column("inode", sa.BigInteger(), nullable=False),
    sa.Column("file_hash", sa.String(64), nullable=False),
)
_sc = stat_cache_table.c

# A cached hash is taken as registered (``cached_hashes``), so an audit row deleted by hand (to
# load its file again) must take its cache entries with it, or the file is skipped as COMMITTED
# for as long as it is unchanged. A trigger does it in the deleting transaction, whoever deletes;
# the scan pays nothing (checking every cached hash against the audit costs 15% of a scan).
_FORGET = "etl_file_audit_forget_cached"
_FORGET_ALL = "etl_file_audit_forget_all_cached"
_CACHE_BY_HASH = f"ix_{STAT_CACHE_TABLE}_hash"
_SQLITE_FORGET_DDL = (
    f"CREATE INDEX IF NOT EXISTS {_CACHE_BY_HASH} ON {STAT_CACHE_TABLE} (pipeline, file_hash)",
    f"CREATE TRIGGER IF NOT EXISTS {_FORGET} AFTER DELETE ON {TABLE_NAME} FOR EACH ROW BEGIN "
    f"DELETE FROM {STAT_CACHE_TABLE} WHERE pipeline = OLD.pipeline AND file_hash = OLD.file_hash; END",
)
_PG_FORGET_DDL = (
    f"CREATE INDEX IF NOT EXISTS {_CACHE_BY_HASH} ON {STAT_CACHE_TABLE} (pipeline, file_hash)",
    # SET search_path FROM CURRENT: the cache table is found whatever the deleting session's path.
    f"CREATE OR REPLACE FUNCTION {_FORGET}() RETURNS trigger LANGUAGE plpgsql "
    "SET search_path FROM CURRENT AS $$ BEGIN "
    f"IF TG_OP = 'TRUNCATE' THEN DELETE FROM {STAT_CACHE_TABLE}; "
    f"ELSE DELETE FROM {STAT_CACHE_TABLE} WHERE pipeline = OLD.pipeline AND file_hash = OLD.file_hash; "
    "END IF; RETURN NULL; END $$",
    f"DROP TRIGGER IF EXISTS {_FORGET} ON {TABLE_NAME}",
    f"CREATE TRIGGER {_FORGET} AFTER DELETE ON {TABLE_NAME} FOR EACH ROW EXECUTE FUNCTION {_FORGET}()",
    f"DROP TRIGGER IF EXISTS {_FORGET_ALL} ON {TABLE_NAME}",
    f"CREATE TRIGGER {_FORGET_ALL} AFTER TRUNCATE ON {TABLE_NAME} "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {_FORGET}()",
)

# One row per attempt (claim), written in the transaction of the audit update that begins or
# ends it: the claim inserts it; commit, fail, release, give back and reclaim close it (ended_at,
# outcome). An attempt is (pipeline, file_hash, claim_token): tokens only ever increase.
attempts_table = sa.Table(
    ATTEMPTS_TABLE,
    metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("file_hash", sa.String(64), primary_key=True),
    sa.Column("claim_token", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("config_hash", sa.String(64)),
    sa.Column("dest_table", sa.Text()),
    sa.Column("dest_url", sa.Text()),  # masked: no password is ever stored
    sa.Column("started_at", _TS, nullable=False),
    sa.Column("ended_at", _TS),
    sa.Column("outcome", sa.String(16)),
    sa.Column("error", sa.Text()),
    sa.Column("error_kind", sa.String(16)),
    sa.Column("rows_written", sa.BigInteger()),
    sa.Column("rows_rejected", sa.BigInteger()),
    sqlite_with_rowid=False,  # one B-tree (the key) to write per attempt, no rowid table beside it
)
_a = attempts_table.c
_ATTEMPT_OPENED = ("pipeline", "file_hash", "claim_token", "worker", "config_hash", "dest_table", "dest_url", "started_at")
_ATTEMPT_CLOSED = ("ended_at", "outcome", "error", "error_kind", "rows_written", "rows_rejected")

# SQLite: the attempt's insert and close as driver SQL in the audit update's transaction (on the
# per-file path, SQLAlchemy's work per statement costs more than these statements). An attempt
# row left by an audit row deleted and registered again (its tokens start over) is replaced.
_SQLITE_OPEN_ATTEMPT = (
    f"INSERT INTO {ATTEMPTS_TABLE} ({', '.join(_ATTEMPT_OPENED)}) VALUES ({', '.join('?' * len(_ATTEMPT_OPENED))}) "
    "ON CONFLICT (pipeline, file_hash, claim_token) DO UPDATE SET "
    + ", ".join([f"{c} = excluded.{c}" for c in _ATTEMPT_OPENED[3:]] + [f"{c} = NULL" for c in _ATTEMPT_CLOSED])
)
_SQLITE_CLOSE_ATTEMPT = (
    f"UPDATE {ATTEMPTS_TABLE} SET ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), outcome = ?, error = ?, "
    "error_kind = ?, rows_written = ?, rows_rejected = ? "
    "WHERE pipeline = ? AND file_hash = ? AND claim_token = ? AND ended_at IS NULL"
)


@dataclass(frozen=True)
class Claim:
    """A lease on one file: valid while ``token`` is the row's claim token."""

    pipeline: str
    file_hash: str
    token: int
    attempts: int
    previous_state: str
    path: str
    registered_at: str = ""  # when the file was first seen (UTC, ISO 8601)
    worker: str = ""  # claimed_by

    @property
    def short_hash(self) -> str:
        return self.file_hash[:12]


@dataclass(frozen=True)
class AuditRow:
    """One file's audit record, as read back."""

    pipeline: str
    file_hash: str
    path: str
    size: int
    state: str
    attempts: int
    claim_token: int
    claimed_by: str | None
    claimed_at: datetime | None
    committed_at: datetime | None
    rows_written: int | None
    rows_rejected: int | None
    last_error: str | None
    error_kind: str | None
    config_hash: str | None
    created_at: datetime | None
    updated_at: datetime | None

    def claimable(self, retry_cap: int) -> bool:
        """Whether ``AuditStore.claim`` would take this file."""
        return claimable(self.state, self.error_kind, self.attempts, retry_cap)


def claimable(state: str, error_kind: str | None, attempts: int, retry_cap: int) -> bool:
    """Whether ``AuditStore.claim`` would take a file in this state (mirrors its WHERE clause)."""
    if attempts >= retry_cap:
        return False
    return state == FileState.PENDING.value or (
        state == FileState.FAILED.value and error_kind == ErrorKind.TRANSIENT.value
    )


@dataclass(frozen=True)
class Attempt:
    """One attempt at a file, as read back from ``etl_file_attempts``."""

    pipeline: str
    file_hash: str
    claim_token: int
    worker: str | None
    config_hash: str | None
    dest_table: str | None
    dest_url: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: str | None  # None while the attempt runs
    error: str | None
    error_kind: str | None
    rows_written: int | None
    rows_rejected: int | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Reclaimed:
    """What reclaiming stale leases did: back to PENDING, or FAILED as lost; and PENDING files
    whose attempts already reach retry_cap (e.g. after retry_cap was lowered), now FAILED."""

    pending: int
    lost: list[str]
    exhausted: list[str] = field(default_factory=list)


def iso_utc(value: datetime | None) -> str:
    """A UTC timestamp as fixed-width text, so that texts sort like the times."""
    return "" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def snapshot_order(created_at: Any, path: str) -> str:
    """A file's order for ``upsert`` and ``replace``: first seen (by the audit's clock), then
    its path. The connectors store it in the ledger; ``filedge verify`` recomputes it."""
    return f"{iso_utc(parse_timestamp(created_at))}|{path}"


def parse_timestamp(value: Any) -> datetime | None:
    """Read a timestamp column: a datetime (PostgreSQL) or ISO-8601 text (SQLite), as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


T = TypeVar("T")


def _all(conn: sa.Connection, stmt: sa.Executable, params: dict[str, Any] | list[dict[str, Any]] | None) -> list[sa.Row[Any]]:
    result = conn.execute(stmt, params) if params is not None else conn.execute(stmt)
    return list(result.all()) if result.returns_rows else []


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


# A brief retry with backoff rides out lock contention and a dropped connection;
# if the database stays away, the caller gets DatabaseUnavailable.
_retry = retry(
    retry=retry_if_exception_type((sa.exc.OperationalError, sa.exc.InterfaceError)),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)


class AuditStore:
    """The audit table in a SQLite or PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = mask(url)
        self.backend = scheme(url)
        try:
            sa_url = sqlalchemy_url(url)
        except ValueError as exc:
            raise UsageError(f"--audit-db-url: {exc}") from None
        if self.backend == "sqlite":
            self.engine = sa.create_engine(sa_url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            self._now = sa.func.strftime("%Y-%m-%dT%H:%M:%fZ", "now")
            self._insert = sqlite_dialect.insert
        else:
            self.engine = sa.create_engine(sa_url, pool_pre_ping=True)
            self._now = sa.func.statement_timestamp()
            self._insert = pg_dialect.insert
        self._schema_ready = False
        self._claim_stmt: sa.Update | None = None
        self._commit_stmt: sa.Update | None = None
        self._pg_claim_stmt: sa.Select[Any] | None = None
        self._pg_commit_stmt: sa.Select[Any] | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _stale(self, seconds: float) -> sa.ColumnElement[bool]:
        """``claimed_at`` older than ``seconds`` by the database's clock (NULL counts as stale)."""
        if self.backend == "sqlite":
            # julianday() reads both 'YYYY-MM-DD HH:MM:SS' and ISO-8601 with 'T' and an offset,
            # which is what other tools write; unreadable text reads as 0, i.e. stale.
            return sa.func.coalesce(sa.func.julianday(_t.claimed_at), 0) <= sa.func.julianday("now") - (
                seconds / 86400.0
            )
        return sa.or_(
            _t.claimed_at.is_(None),
            _t.claimed_at <= sa.func.statement_timestamp() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds),
        )

    @property
    def _marker(self) -> str:
        """The driver's parameter placeholder, for ``_raw_rows``."""
        return "?" if self.backend == "sqlite" else "%s"

    def _raw_rows(self, query: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one query run through the driver directly: on 100,000 rows,
        SQLAlchemy's row objects cost four times the query."""
        with self._errors():
            # The pool hands out raw connections without wrapping the driver's errors.
            try:
                raw = self.engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    cursor.execute(query, tuple(params))
                    rows = cursor.fetchall()
                    cursor.close()
                    raw.commit()
                finally:
                    raw.close()
            except self.engine.dialect.loaded_dbapi.Error as exc:
                raise DatabaseUnavailable(f"audit database {self.display_url}: {mask(first_line(exc))}") from None
        return rows

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            if _transient(exc):
                detail = getattr(exc, "orig", None) or exc
                raise DatabaseUnavailable(
                    f"audit database {self.display_url}: {mask(str(detail).strip().splitlines()[0])}"
                ) from None
            raise

    def _execute(
        self, stmt: sa.Executable, params: dict[str, Any] | list[dict[str, Any]] | None = None
    ) -> list[sa.Row[Any]]:
        """Run one statement (with its parameters, or once per parameter set) in its own transaction; the rows
        it returns. Every DML statement RETURNs the rows it changed: driver row counts are not
        reliable across dialects."""
        return self._transact(lambda conn: _all(conn, stmt, params))

    def _transact(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` in one transaction, retried as a whole (a failed try rolled back)."""
        with self._errors():
            return self._transact_retrying(work)

    @_retry
    def _transact_retrying(self, work: Callable[[sa.Connection], T]) -> T:
        with self.engine.begin() as conn:
            return work(conn)

    def ensure_schema(self) -> None:
        """Create the audit table and its indexes if they do not exist."""
        if self._schema_ready:
            return
        if self.backend == "sqlite":
            path = sqlite_path(self.url)
            if path != ":memory:":
                from pathlib import Path

                if not Path(path).parent.is_dir():
                    raise DatabaseUnavailable(
                        f"audit database {self.display_url}: directory {Path(path).parent} does not exist"
                    )
        try:
            with self._errors():
                self._create_all()
        except sa.exc.ProgrammingError as exc:  # e.g. no CREATE privilege for a new table
            raise DatabaseUnavailable(
                f"audit database {self.display_url}: cannot create filedge's tables "
                f"({mask(first_line(getattr(exc, 'orig', None) or exc))}); run filedge once as a role that "
                "may create tables and triggers in this schema (etl_file_audit, etl_file_attempts, etl_file_stat_cache)"
            ) from None
        self._schema_ready = True

    @_retry
    def _create_all(self) -> None:
        with self.engine.begin() as conn:
            # Nothing to create: take no lock. A process stopped while it held the lock below
            # (SIGSTOP, a hung client) must not block every later command (found by the fault
            # harness: a SIGSTOPped worker froze the whole campaign).
            if self._schema_complete(conn):
                return
            if self.backend != "sqlite":
                # Workers starting together on an empty database would race in CREATE TABLE
                # (a unique violation in the catalog): one creator at a time, the others then
                # find the tables (READ COMMITTED: each check is a new snapshot). A wait is
                # bounded: a holder that never finishes is an error, not a hang.
                conn.execute(sa.text("SET LOCAL lock_timeout = '60s'"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK_KEY})
            tables = set(sa.inspect(conn).get_table_names())
            metadata.create_all(conn, checkfirst=True)
            if TABLE_NAME not in tables and STAT_CACHE_TABLE in tables:
                # The audit table was dropped by hand: no cached hash is registered any more.
                conn.exec_driver_sql(f"DELETE FROM {STAT_CACHE_TABLE}")
            try:
                with conn.begin_nested():
                    for statement in _SQLITE_FORGET_DDL if self.backend == "sqlite" else _PG_FORGET_DDL:
                        conn.exec_driver_sql(statement)
            except sa.exc.DBAPIError:
                if not set(metadata.tables) <= tables:
                    raise
                # Tables made by an older filedge, and this role may not add the trigger (not
                # their owner, a read-only file): work without it until their owner runs filedge.

    def _schema_complete(self, conn: sa.Connection) -> bool:
        """Whether every table, the cache index and the cache triggers exist (one catalog query)."""
        tables = list(metadata.tables)
        if self.backend == "sqlite":
            names = [*tables, _CACHE_BY_HASH, _FORGET]
            query = f"SELECT count(*) FROM sqlite_master WHERE name IN ({', '.join('?' * len(names))})"
            return conn.exec_driver_sql(query, tuple(names)).scalar() == len(names)
        query = (
            "SELECT (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = "
            "current_schema()::regnamespace AND relname = ANY(%s)), "
            f"(SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = to_regclass('{TABLE_NAME}') "
            "AND tgname = ANY(%s))"
        )
        found = conn.exec_driver_sql(query, ([*tables, _CACHE_BY_HASH], [_FORGET, _FORGET_ALL])).one()
        return tuple(found) == (len(tables) + 1, 2)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- transitions ----------------------------------------------------------------------

    def register(self, pipeline: str, file_hash: str, path: str, size: int, config_hash: str) -> bool:
        """PENDING row for a content hash seen for the first time; True if it was new."""
        return file_hash in self.register_many(pipeline, [(file_hash, path, size)], config_hash)

    def register_many(self, pipeline: str, files: Sequence[tuple[str, str, int]], config_hash: str) -> set[str]:
        """Register many ``(file_hash, path, size)`` in one transaction; the hashes that were new."""
        if not files:
            return set()
        stmt = (
            self._insert(audit_table)
            .values(
                state=FileState.PENDING.value,
                attempts=0,
                claim_token=0,
                config_hash=config_hash,
                created_at=self._now,
                updated_at=self._now,
            )
            .on_conflict_do_nothing(index_elements=["pipeline", "file_hash"])
            .returning(_t.file_hash)
        )
        params = [{"pipeline": pipeline, "file_hash": h, "path": p, "size": n} for h, p, n in files]
        return {row[0] for row in self._execute(stmt, params)}

    def cached_hashes(self, pipeline: str) -> dict[str, tuple[tuple[int, int, int, int], str]]:
        """The stat cache of a pipeline: path -> ((size, mtime_ns, ctime_ns, inode), hash).

        Entries are written only after their hash is registered (``runner.plan_run``), so a
        cached file needs no registration. Read through the driver directly (``_raw_rows``)."""
        query = (
            f"SELECT path, size, mtime_ns, ctime_ns, inode, file_hash FROM {STAT_CACHE_TABLE} "
            f"WHERE pipeline = {self._marker}"
        )
        if self.backend == "sqlite":
            # Read along the primary key, in the order the rows were written: SQLite would
            # otherwise pick the trigger's (pipeline, file_hash) index and fetch the rows in hash
            # order (100,000 entries: 0.26 s instead of 0.11 s).
            query += " ORDER BY path"
        rows = self._raw_rows(query, (pipeline,))
        return {row[0]: ((row[1], row[2], row[3], row[4]), row[5]) for row in rows}

    def remember_hashes(self, pipeline: str, entries: Sequence[tuple[str, tuple[int, int, int, int], str]]) -> None:
        """Store ``(path, fingerprint, hash)`` entries in the stat cache (replacing old ones)."""
        if not entries:
            return
        stmt = self._insert(stat_cache_table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["pipeline", "path"],
            set_={k: stmt.excluded[k] for k in ("size", "mtime_ns", "ctime_ns", "inode", "file_hash")},
        )
        params = [
            {"pipeline": pipeline, "path": path, "size": fp[0], "mtime_ns": fp[1], "ctime_ns": fp[2],
             "inode": fp[3], "file_hash": file_hash}
            for path, fp, file_hash in entries
        ]
        self._execute(stmt, params)

    def reclaim_stale(self, pipeline: str, stale_seconds: float, retry_cap: int) -> Reclaimed:
        """Leases older than ``stale_seconds``: back to PENDING, or FAILED once retry_cap is used.
        PENDING files that can never be claimed again (attempts >= retry_cap) become FAILED too,
        so that they show, and `requeue` can reset them."""
        reason = f"lease not renewed for {stale_seconds:g} s: reclaimed"
        reclaimed = self._reclaim(pipeline, self._stale(stale_seconds), retry_cap, reason)
        exhausted = self._execute(
            sa.update(audit_table)
            .where(_t.pipeline == pipeline, _t.state == FileState.PENDING.value, _t.attempts >= retry_cap)
            .values(
                state=FileState.FAILED.value,
                error_kind=ErrorKind.TRANSIENT.value,
                last_error=sa.func.coalesce(_t.last_error + sa.literal("; "), sa.literal(""))
                + sa.literal(f"retry_cap ({retry_cap}) reached"),
                updated_at=self._now,
            )
            .returning(_t.file_hash)
        )
        return Reclaimed(reclaimed.pending, reclaimed.lost, [row[0] for row in exhausted])

    def relocate(self, pipeline: str, file_hash: str, old_path: str, new_path: str) -> bool:
        """Record where a file's bytes are now, when the path first seen no longer holds them."""
        stmt = (
            sa.update(audit_table)
            .where(_t.pipeline == pipeline, _t.file_hash == file_hash, _t.path == old_path)
            .values(path=new_path, updated_at=self._now)
            .returning(_t.file_hash)
        )
        return len(self._execute(stmt)) == 1

    def reclaim_worker(self, pipeline: str, worker_prefix: str, retry_cap: int) -> Reclaimed:
        """Leases of workers known dead (``claimed_by`` starting with ``worker_prefix``), whatever
        their age: as ``reclaim_stale``. Safe even if one is alive: its claim token is fenced."""
        pattern = worker_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        reason = f"holder {worker_prefix}... known dead: reclaimed"
        return self._reclaim(pipeline, _t.claimed_by.like(pattern, escape="\\"), retry_cap, reason)

    def _reclaim(self, pipeline: str, condition: sa.ColumnElement[bool], retry_cap: int, reason: str) -> Reclaimed:
        base = sa.and_(_t.pipeline == pipeline, _t.state == FileState.PROCESSING.value, condition)
        to_failed = (
            sa.update(audit_table)
            .where(base, _t.attempts >= retry_cap)
            .values(
                state=FileState.FAILED.value,
                error_kind=ErrorKind.LOST.value,
                last_error=sa.literal("worker lost ") + sa.cast(_t.attempts, sa.String) + sa.literal(" times"),
                updated_at=self._now,
            )
            .returning(_t.file_hash, _t.claim_token, _t.pipeline)
        )
        to_pending = (
            sa.update(audit_table)
            .where(base, _t.attempts < retry_cap)
            .values(state=FileState.PENDING.value, updated_at=self._now)
            .returning(_t.file_hash, _t.claim_token, _t.pipeline)
        )
        lost = self._ending(to_failed, None, Outcome.LOST, error=reason, error_kind=ErrorKind.LOST.value)
        pending = self._ending(to_pending, None, Outcome.LOST, error=reason, error_kind=ErrorKind.LOST.value)
        return Reclaimed(pending=len(pending), lost=[row[0] for row in lost])

    def _ending(
        self, update: sa.Update, params: dict[str, Any] | None, outcome: Outcome, pg_stmt: sa.Select[Any] | None = None,
        **close: Any,
    ) -> list[sa.Row[Any]]:
        """Run an audit transition that ends attempts (an UPDATE … RETURNING file_hash,
        claim_token, pipeline) and close those attempts (``close``: error, error_kind,
        rows_written, rows_rejected) in the same transaction, so that history never disagrees
        with the audit row; the rows it returned. ``pg_stmt``: the PostgreSQL statement, prebuilt."""
        if self.backend != "sqlite":
            return self._execute(pg_stmt if pg_stmt is not None else self._with_close(update, outcome, **close), params)

        def end(conn: sa.Connection) -> list[sa.Row[Any]]:
            rows = _all(conn, update, params)
            if rows:
                values = (outcome.value, close.get("error"), close.get("error_kind"), close.get("rows_written"),
                          close.get("rows_rejected"))
                batch = [(*values, row[2], row[0], row[1]) for row in rows]
                conn.exec_driver_sql(_SQLITE_CLOSE_ATTEMPT, batch[0] if len(batch) == 1 else batch)
            return rows

        return self._transact(end)

    def _with_close(self, update: sa.Update, outcome: Outcome, **close: Any) -> sa.Select[Any]:
        """PostgreSQL: ``update`` and the UPDATE closing the attempts it ended, as one statement
        (a data-modifying CTE), so that history costs no round trip."""
        changed = update.cte("changed")
        values = {"error": None, "error_kind": None, "rows_written": None, "rows_rejected": None, **close}
        closing = (
            sa.update(attempts_table)
            .where(
                _a.pipeline == changed.c.pipeline,
                _a.file_hash == changed.c.file_hash,
                _a.claim_token == changed.c.claim_token,
                _a.ended_at.is_(None),
            )
            .values(ended_at=self._now, outcome=outcome.value, **values)
        )
        return sa.select(*changed.c).add_cte(closing.cte("closed"))

    def claim(
        self,
        pipeline: str,
        file_hash: str,
        worker: str,
        retry_cap: int,
        config_hash: str,
        dest_table: str | None = None,
        dest_url: str | None = None,
    ) -> Claim | None:
        """Take the lease on a PENDING (or retryable FAILED) file, and open its attempt (recording
        the destination, its URL masked); None if another has it or it needs no work."""
        if self._claim_stmt is None:  # built once: statement construction costs more than a small file's claim
            claimable = sa.or_(
                _t.state == FileState.PENDING.value,
                sa.and_(_t.state == FileState.FAILED.value, _t.error_kind == ErrorKind.TRANSIENT.value),
            )
            self._claim_stmt = (
                sa.update(audit_table)
                .where(
                    _t.pipeline == sa.bindparam("b_pipeline"),
                    _t.file_hash == sa.bindparam("b_hash"),
                    claimable,
                    _t.attempts < sa.bindparam("b_cap"),
                )
                .values(
                    previous_state=_t.state,
                    state=FileState.PROCESSING.value,
                    attempts=_t.attempts + 1,
                    claim_token=_t.claim_token + 1,
                    claimed_by=sa.bindparam("b_worker"),
                    claimed_at=self._now,
                    committed_at=None,
                    config_hash=sa.bindparam("b_config_hash"),
                    updated_at=self._now,
                )
                .returning(_t.claim_token, _t.attempts, _t.previous_state, _t.path, _t.created_at, _t.claimed_at)
            )
        params = {
            "b_pipeline": pipeline, "b_hash": file_hash, "b_cap": retry_cap, "b_worker": worker,
            "b_config_hash": config_hash, "b_dest_table": dest_table, "b_dest_url": mask(dest_url) if dest_url else None,
        }
        if self.backend == "sqlite":
            rows = self._transact(lambda conn: self._claim_sqlite(conn, params))
        else:
            if self._pg_claim_stmt is None:
                self._pg_claim_stmt = self._claim_and_open(self._claim_stmt)
            rows = self._execute(self._pg_claim_stmt, params)
        if not rows:
            # A retried statement may have claimed the file the first time (its answer lost with
            # the connection): the lease is then ours, not another worker's.
            row = self.get(pipeline, file_hash)
            if row is None or row.state != FileState.PROCESSING.value or row.claimed_by != worker:
                return None
            return Claim(
                pipeline, file_hash, row.claim_token, row.attempts, "PENDING", row.path, iso_utc(row.created_at), worker
            )
        token, attempts, previous, path, created, _ = rows[0]
        registered = iso_utc(parse_timestamp(created))
        return Claim(pipeline, file_hash, int(token), int(attempts), previous, path, registered, worker)

    def _claim_sqlite(self, conn: sa.Connection, params: dict[str, Any]) -> list[sa.Row[Any]]:
        """The claim and the insert of its attempt, in one transaction."""
        assert self._claim_stmt is not None
        rows = _all(conn, self._claim_stmt, params)
        if rows:
            conn.exec_driver_sql(_SQLITE_OPEN_ATTEMPT, (
                params["b_pipeline"], params["b_hash"], rows[0][0], params["b_worker"], params["b_config_hash"],
                params["b_dest_table"], params["b_dest_url"], rows[0][5],
            ))
        return rows

    def _claim_and_open(self, claim: sa.Update) -> sa.Select[Any]:
        """PostgreSQL: the claim and the insert of its attempt as one statement (one round trip)."""
        claimed = claim.returning(_t.pipeline, _t.file_hash, _t.claimed_by, _t.config_hash).cte("claimed")
        columns = list(_ATTEMPT_OPENED)
        opening = pg_dialect.insert(attempts_table).from_select(
            columns,
            sa.select(
                claimed.c.pipeline, claimed.c.file_hash, claimed.c.claim_token, claimed.c.claimed_by,
                claimed.c.config_hash, sa.bindparam("b_dest_table", type_=sa.Text()),
                sa.bindparam("b_dest_url", type_=sa.Text()), claimed.c.claimed_at,
            ),
        )
        opening = opening.on_conflict_do_update(
            index_elements=columns[:3],
            set_={**{c: opening.excluded[c] for c in columns[3:]}, **{c: None for c in _ATTEMPT_CLOSED}},
        )
        returned = ("claim_token", "attempts", "previous_state", "path", "created_at", "claimed_at")
        return sa.select(*[claimed.c[name] for name in returned]).add_cte(opening.cte("opened"))

    def _holding(self, claim: Claim) -> sa.ColumnElement[bool]:
        return sa.and_(
            _t.pipeline == claim.pipeline,
            _t.file_hash == claim.file_hash,
            _t.state == FileState.PROCESSING.value,
            _t.claim_token == claim.token,
        )

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False if it is no longer ours."""
        stmt = (
            sa.update(audit_table)
            .where(self._holding(claim))
            .values(claimed_at=self._now)
            .returning(_t.file_hash)
        )
        return len(self._execute(stmt)) == 1

    def commit(self, claim: Claim, rows_written: int, rows_rejected: int = 0) -> bool:
        """PROCESSING -> COMMITTED; False if the lease was lost."""
        if self._commit_stmt is None:
            self._commit_stmt = (
                sa.update(audit_table)
                .where(
                    _t.pipeline == sa.bindparam("b_pipeline"),
                    _t.file_hash == sa.bindparam("b_hash"),
                    _t.state == FileState.PROCESSING.value,
                    _t.claim_token == sa.bindparam("b_token"),
                )
                .values(
                    state=FileState.COMMITTED.value,
                    committed_at=self._now,
                    rows_written=sa.bindparam("b_rows"),
                    rows_rejected=sa.bindparam("b_rejected"),
                    last_error=None,
                    error_kind=None,
                    updated_at=self._now,
                )
                .returning(_t.file_hash, _t.claim_token, _t.pipeline)
            )
            if self.backend != "sqlite":
                self._pg_commit_stmt = self._with_close(
                    self._commit_stmt, Outcome.COMMITTED,
                    rows_written=sa.bindparam("b_rows"), rows_rejected=sa.bindparam("b_rejected"),
                )
        params = {
            "b_pipeline": claim.pipeline, "b_hash": claim.file_hash, "b_token": claim.token,
            "b_rows": rows_written, "b_rejected": rows_rejected,
        }
        if self._ending(
            self._commit_stmt, params, Outcome.COMMITTED, self._pg_commit_stmt,
            rows_written=rows_written, rows_rejected=rows_rejected,
        ):
            return True
        # A retried statement may have committed the first time: that is still a success.
        row = self.get(claim.pipeline, claim.file_hash)
        return row is not None and row.state == FileState.COMMITTED.value and row.claim_token == claim.token

    def fail(self, claim: Claim, error: str, kind: ErrorKind) -> bool:
        """PROCESSING -> FAILED with its reason; False if the lease was lost."""
        stmt = (
            sa.update(audit_table)
            .where(self._holding(claim))
            .values(
                state=FileState.FAILED.value,
                last_error=error,
                error_kind=kind.value,
                updated_at=self._now,
            )
            .returning(_t.file_hash, _t.claim_token, _t.pipeline)
        )
        return len(self._ending(stmt, None, Outcome.FAILED, error=error, error_kind=kind.value)) == 1

    def release(self, claim: Claim, error: str, retry_cap: int) -> bool:
        """PROCESSING -> PENDING (claimable again), or FAILED if retry_cap attempts are used."""
        exhausted = claim.attempts >= retry_cap
        stmt = (
            sa.update(audit_table)
            .where(self._holding(claim))
            .values(
                state=(FileState.FAILED if exhausted else FileState.PENDING).value,
                last_error=error,
                error_kind=(ErrorKind.TRANSIENT if exhausted else ErrorKind.CHANGED).value,
                updated_at=self._now,
            )
            .returning(_t.file_hash, _t.claim_token, _t.pipeline)
        )
        return len(self._ending(stmt, None, Outcome.RELEASED, error=error, error_kind=ErrorKind.CHANGED.value)) == 1

    def give_back(self, claim: Claim, reason: str, token: int | None = None) -> bool:
        """PROCESSING -> PENDING without charging the attempt (the run was stopped, the file
        did nothing wrong). The claim token stays: a write of the given-back claim is fenced.
        With ``token``, only if the claim's is lower, and the row's token becomes ``token``."""
        holding = self._holding(claim)
        values: dict[str, Any] = {}
        if token is not None:
            holding = sa.and_(holding, _t.claim_token < token)
            values["claim_token"] = token
        stmt = (
            sa.update(audit_table)
            .where(holding)
            .values(
                state=FileState.PENDING.value,
                attempts=_t.attempts - 1,
                claimed_by=None,
                claimed_at=None,
                last_error=reason,
                error_kind=None,
                updated_at=self._now,
                **values,
            )
            # the ended attempt is the claim's, under its own token
            .returning(_t.file_hash, sa.literal(claim.token, sa.BigInteger()).label("claim_token"), _t.pipeline)
        )
        return len(self._ending(stmt, None, Outcome.GIVEN_BACK, error=reason)) == 1

    def catch_up(self, claim: Claim, ledger_token: int, reason: str) -> bool:
        """The destination's ledger refused ``claim``'s write with a newer token, yet the claim
        still holds the file: no newer claim exists, so the audit row is younger than the
        ledger (deleted by hand and registered again, or restored from an older copy) and its
        tokens started over. Give the file back uncharged with its token raised to the ledger's,
        so that the next claim's write is accepted. False if the lease is not ``claim``'s (the
        refusal was right: a newer claim holds it)."""
        return self.give_back(claim, reason, ledger_token)

    def fenced(self, claim: Claim, error: str) -> bool:
        """Note on ``claim``'s attempt, which a reclaim closed as lost, that its worker came back
        and its write was refused. History only: the audit row belongs to the newer claim."""
        stmt = (
            sa.update(attempts_table)
            .where(
                _a.pipeline == claim.pipeline,
                _a.file_hash == claim.file_hash,
                _a.claim_token == claim.token,
                _a.outcome == Outcome.LOST.value,
            )
            .values(outcome=Outcome.FENCED.value, error=error, ended_at=self._now)
            .returning(_a.claim_token)
        )
        return len(self._execute(stmt)) == 1

    def requeue(self, file_hashes: Sequence[str] | None, pipeline: str | None = None) -> int:
        """FAILED -> PENDING with attempts 0 (all FAILED files when ``file_hashes`` is None)."""
        where = [_t.state == FileState.FAILED.value]
        if pipeline:
            where.append(_t.pipeline == pipeline)
        if file_hashes is not None:
            if not file_hashes:
                return 0
            where.append(_t.file_hash.in_(list(file_hashes)))
        stmt = (
            sa.update(audit_table)
            .where(*where)
            .values(
                state=FileState.PENDING.value,
                attempts=0,
                error_kind=None,
                updated_at=self._now,
            )
            .returning(_t.file_hash)
        )
        return len(self._execute(stmt))

    # -- queries --------------------------------------------------------------------------

    def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of files in each state (every state present, zero included)."""
        stmt = sa.select(_t.state, sa.func.count()).group_by(_t.state)
        if pipeline:
            stmt = stmt.where(_t.pipeline == pipeline)
        found = {state: int(n) for state, n in self._execute(stmt)}
        return {state.value: found.get(state.value, 0) for state in FileState}

    def get(self, pipeline: str, file_hash: str) -> AuditRow | None:
        rows = self.rows(pipeline=pipeline, file_hashes=[file_hash])
        return rows[0] if rows else None

    def rows(
        self,
        pipeline: str | None = None,
        state: str | None = None,
        file_hashes: Iterable[str] | None = None,
    ) -> list[AuditRow]:
        """Audit rows, oldest first, optionally filtered."""
        stmt = sa.select(*[audit_table.c[f] for f in AuditRow.__dataclass_fields__]).order_by(
            _t.created_at, _t.path
        )
        if pipeline:
            stmt = stmt.where(_t.pipeline == pipeline)
        if state:
            stmt = stmt.where(_t.state == state)
        if file_hashes is not None:
            stmt = stmt.where(_t.file_hash.in_(list(file_hashes)))
        return self._audit_rows(stmt)

    def _audit_rows(self, stmt: sa.Select[Any]) -> list[AuditRow]:
        out = []
        for row in self._execute(stmt):
            data = dict(row._mapping)
            for key in ("claimed_at", "committed_at", "created_at", "updated_at"):
                data[key] = parse_timestamp(data[key])
            out.append(AuditRow(**data))
        return out

    def open_rows(self, pipeline: str) -> dict[str, AuditRow]:
        """The rows of a pipeline that are not COMMITTED, by hash: all that a run may work on
        (committed files, usually nearly all of them, are not read)."""
        stmt = sa.select(*[audit_table.c[f] for f in AuditRow.__dataclass_fields__]).where(
            _t.pipeline == pipeline, _t.state != FileState.COMMITTED.value
        )
        return {row.file_hash: row for row in self._audit_rows(stmt)}

    def rows_for(self, pipeline: str, file_hashes: Sequence[str]) -> dict[str, AuditRow]:
        """The audit rows of many hashes of one pipeline, by hash (queried in chunks)."""
        found: dict[str, AuditRow] = {}
        for start in range(0, len(file_hashes), 500):
            for row in self.rows(pipeline=pipeline, file_hashes=file_hashes[start : start + 500]):
                found[row.file_hash] = row
        return found

    def resolve_hashes(self, prefixes: Sequence[str], pipeline: str | None = None, label: str = "--hash") -> list[str]:
        """Full hashes for unique hash prefixes; UsageError for unknown or ambiguous ones (the
        message starts with ``label`` and the prefix)."""
        resolved = []
        for prefix in prefixes:
            key = prefix.strip().lower()
            if not key or any(c not in "0123456789abcdef" for c in key):
                raise UsageError(f"{label} {prefix!r}: not a hexadecimal hash or prefix")
            stmt = sa.select(_t.file_hash).distinct().where(_t.file_hash.like(key + "%")).limit(2)
            if pipeline:
                stmt = stmt.where(_t.pipeline == pipeline)
            found = [row[0] for row in self._execute(stmt)]
            if not found:
                raise UsageError(f"{label} {prefix}: no file with this hash in the audit table")
            if len(found) > 1:
                raise UsageError(f"{label} {prefix}: prefix matches more than one file; give more characters")
            resolved.append(found[0])
        return resolved

    # -- attempt history ------------------------------------------------------------------

    def attempts(self, pipeline: str, file_hash: str) -> list[Attempt]:
        """The recorded attempts at one file, oldest first."""
        stmt = (
            sa.select(*[attempts_table.c[f] for f in Attempt.__dataclass_fields__])
            .where(_a.pipeline == pipeline, _a.file_hash == file_hash)
            .order_by(_a.claim_token)
        )
        out = []
        for row in self._execute(stmt):
            data = dict(row._mapping)
            data["started_at"] = parse_timestamp(data["started_at"])
            data["ended_at"] = parse_timestamp(data["ended_at"])
            out.append(Attempt(**data))
        return out

    def prune_attempts(self, older_than_days: float, pipeline: str | None = None, dry_run: bool = False) -> int:
        """Delete the attempts that ended more than ``older_than_days`` ago (by the database's
        clock); how many (would) go. Attempts still running and the audit rows are never
        touched: the audit row is what keeps a committed file from loading twice."""
        seconds = older_than_days * 86400.0
        if self.backend == "sqlite":
            ended_before = sa.func.julianday(_a.ended_at) < sa.func.julianday("now") - seconds / 86400.0
        else:
            ended_before = _a.ended_at < sa.func.statement_timestamp() - sa.func.make_interval(
                0, 0, 0, 0, 0, 0, seconds
            )
        where = [ended_before]  # NULL (still running) is never before anything
        if pipeline:
            where.append(_a.pipeline == pipeline)
        if dry_run:
            return int(self._execute(sa.select(sa.func.count()).select_from(attempts_table).where(*where))[0][0])
        return len(self._execute(sa.delete(attempts_table).where(*where).returning(_a.claim_token)))

    # -- filedge verify -------------------------------------------------------------------

    def has_schema(self) -> bool:
        """Whether the audit table exists (checked without creating anything)."""
        if self.backend == "sqlite":
            path = sqlite_path(self.url)
            if path != ":memory:":
                from pathlib import Path

                if not Path(path).is_file():
                    return False
        with self._errors():
            return sa.inspect(self.engine).has_table(TABLE_NAME)

    def clock(self) -> Any:
        """The audit database's time now, as ``committed_at`` is written (text on SQLite)."""
        return self._execute(sa.select(self._now))[0][0]

    def verify_rows(self, pipeline: str, committed_since: Any) -> list[VerifyRow]:
        """Every audit row of a pipeline, as ``filedge verify`` reads them: ``recent`` when
        committed at or after ``committed_since`` (a ``clock()`` value). Read through the driver
        directly (``_raw_rows``)."""
        query = (
            "SELECT file_hash, state, path, attempts, claim_token, error_kind, rows_written, rows_rejected, "
            f"created_at, committed_at IS NOT NULL AND committed_at >= {self._marker} "
            f"FROM {TABLE_NAME} WHERE pipeline = {self._marker}"
        )
        return [VerifyRow(*row[:9], bool(row[9])) for row in self._raw_rows(query, (committed_since, pipeline))]

    def repair(
        self, pipeline: str, file_hash: str, state: str, token: int, token_at_least: int, requeue_reason: str | None
    ) -> bool:
        """``filedge verify --fix``, only if the row is still in ``state`` under ``token``: raise
        its claim token to ``token_at_least`` (the ledger's: a reload under an older token would
        be refused as fenced); with ``requeue_reason``, also requeue it: PENDING, attempts 0,
        ``last_error`` the reason. False if the row changed since it was read."""
        values: dict[str, Any] = {
            "claim_token": sa.case((_t.claim_token < token_at_least, token_at_least), else_=_t.claim_token),
            "updated_at": self._now,
        }
        if requeue_reason is not None:
            values |= {"state": FileState.PENDING.value, "attempts": 0, "last_error": requeue_reason, "error_kind": None}
        stmt = (
            sa.update(audit_table)
            .where(_t.pipeline == pipeline, _t.file_hash == file_hash, _t.state == state, _t.claim_token == token)
            .values(**values)
            .returning(_t.file_hash)
        )
        return len(self._execute(stmt)) == 1


class VerifyRow(NamedTuple):
    """An audit row as ``filedge verify`` reads it (``created_at`` as stored)."""

    file_hash: str
    state: str
    path: str
    attempts: int
    claim_token: int
    error_kind: str | None
    rows_written: int | None
    rows_rejected: int | None
    created_at: Any
    recent: bool  # committed at or after the time given (verify began reading): not compared


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    # NORMAL, not FULL: in WAL mode a commit still survives any process crash; only an OS crash
    # or power loss can undo the last commits. The audit table then falls back to an earlier
    # state that the next runs repair (a lost COMMITTED or claim is reclaimed and the file
    # rewritten idempotently; a write fenced by a lost token waits one stale timeout). The
    # destination keeps FULL and commits first, so COMMITTED always means durable rows.
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()
