"""The PostgreSQL connector against a real server: types, fencing, zombies, errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg
import pytest

from filedge_core.batches import read_file
from filedge_core.config import PipelineConfig, parse_pipeline
from filedge_core.connectors import FileWrite, open_connector
from filedge_core.connectors import postgresql as pgc
from filedge_core.connectors.postgresql import PostgresConnector, conninfo
from filedge_core.errors import (
    ConfigError,
    DatabaseUnavailable,
    DataError,
    DestinationUnreachable,
    LeaseLost,
    TransientError,
)

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
HASH = "ab" * 32
LEASE_LOST_EXIT = 23
UTC = dt.UTC

COLUMNS: list[dict[str, Any]] = [
    {"source": "order_id", "type": "int", "required": True},
    {"source": "customer", "type": "string"},
    {"source": "amount", "type": "float"},
    {"source": "paid", "type": "bool"},
    {"source": "order_date", "type": "date"},
    {"source": "created_at", "type": "datetime"},
]


def make_config(
    url: str, dest_table: str = "orders", name: str = "orders", columns: Any = None, patience: float = 15
) -> PipelineConfig:
    return parse_pipeline(
        {
            "name": name,
            "dest_table": dest_table,
            "connector": {"type": "postgresql", "url": url, "connect_retry_seconds": patience},
            "columns": columns or COLUMNS,
        }
    )


def orders(n: int, tag: str = "c") -> pl.DataFrame:
    """``n`` typed rows shaped as the reader produces them; ``tag`` marks whose rows they are."""
    return pl.DataFrame(
        {
            "order_id": list(range(1, n + 1)),
            "customer": [f"{tag}-{i}" for i in range(1, n + 1)],
            "amount": [i * 1.5 for i in range(1, n + 1)],
            "paid": [i % 2 == 0 for i in range(1, n + 1)],
            "order_date": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)],
            "created_at": [dt.datetime(2024, 1, 1, 12, 0, i % 60) for i in range(n)],
        },
        schema_overrides={"created_at": pl.Datetime("us", "UTC")},
    )


@pytest.fixture
def make_connector() -> Iterator[Callable[..., PostgresConnector]]:
    """Prepared connectors (``make_config`` arguments), closed after the test."""
    opened: list[PostgresConnector] = []

    def make(url: str, **kwargs: Any) -> PostgresConnector:
        conn = open_connector(make_config(url, **kwargs))
        assert isinstance(conn, PostgresConnector)
        opened.append(conn)
        conn.prepare()
        return conn

    yield make
    for conn in opened:
        conn.close()


def rows_by_token(pg: psycopg.Connection, table: str = "orders", file_hash: str = HASH) -> dict[int, int]:
    """How many rows of ``file_hash`` each claim token has in ``table``."""
    found = pg.execute(
        f"SELECT _filedge_claim_token, count(*) FROM {table} WHERE _filedge_file_hash = %s GROUP BY 1",
        (file_hash,),
    ).fetchall()
    return {int(token): int(n) for token, n in found}


def ledger(pg: psycopg.Connection, schema: str = "public") -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT pipeline, file_hash, dest_table, claim_token, row_count "
        f"FROM {schema}._filedge_loads ORDER BY 1, 2"
    ).fetchall()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db.example:5433/warehouse",
        "postgresql+psycopg://u:pw@db.example:5433/warehouse",
        "postgres://u:pw@db.example:5433/warehouse",
    ],
)
def test_url_forms(url: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(conninfo(url))
    assert params["host"] == "db.example" and params["port"] == "5433" and params["dbname"] == "warehouse"
    assert params["user"] == "u" and params["password"] == "pw"
    assert params["connect_timeout"] == str(pgc.CONNECT_TIMEOUT_SECONDS)


def test_url_of_another_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a postgresql:// URL") as err:
        conninfo("mysql://u:secret@host/db")
    assert "secret" not in str(err.value)


def test_open_connector_knows_postgresql() -> None:
    config = make_config("postgresql://u@127.0.0.1:1/db")
    assert isinstance(open_connector(config), PostgresConnector)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg"])
def test_connects_with_other_url_spellings(pg_database: str, make_connector: Any, scheme: str) -> None:
    url = scheme + "://" + pg_database.split("://", 1)[1]
    conn = make_connector(url)
    assert conn.write(FileWrite("orders", HASH, 1, orders(3))).rows_written == 3


# -- table creation and types ---------------------------------------------------------------


def test_creates_typed_table_and_round_trips_values(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    data = (
        "order_id,customer,amount,paid,order_date,created_at\n"
        '1,"Smith, ""Jo""",12.5,true,2024-03-01,2024-03-01T10:00:00Z\n'
        '2,"two\nlines",-0.1,no,2024-02-29,2024-03-01 10:00:00.123456+02:00\n'
        "3,\\N,1e300,1,1999-12-31,2024-03-01\n"
        "4,,,,,\n"
        "5,Zoë ✓,-2.5e-3,FALSE,0001-01-01,9999-12-31 23:59:59\n"
    ).encode()
    frame = read_file(data, make_config(pg_database))
    conn = make_connector(pg_database)
    assert conn.write(FileWrite("orders", HASH, 1, frame)).rows_written == 5

    types: dict[str, str] = dict(
        pg_conn.execute(
            "SELECT column_name, data_type || ' ' || is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'orders'"
        ).fetchall()
    )
    assert types == {
        "order_id": "bigint YES",
        "customer": "text YES",
        "amount": "double precision YES",
        "paid": "boolean YES",
        "order_date": "date YES",
        "created_at": "timestamp with time zone YES",
        "_filedge_file_hash": "text NO",
        "_filedge_claim_token": "bigint NO",
    }
    indexes = [r[0] for r in pg_conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders'")]
    assert any("(_filedge_file_hash" in d for d in indexes), indexes

    got = pg_conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall()
    assert got[0] == (
        1,
        'Smith, "Jo"',
        12.5,
        True,
        dt.date(2024, 3, 1),
        dt.datetime(2024, 3, 1, 10, tzinfo=UTC),
        HASH,
        1,
    )
    assert got[1][:6] == (
        2,
        "two\nlines",
        -0.1,
        False,
        dt.date(2024, 2, 29),
        dt.datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC),
    )
    assert got[2][:6] == (3, "\\N", 1e300, True, dt.date(1999, 12, 31), dt.datetime(2024, 3, 1, tzinfo=UTC))
    assert got[3][:6] == (4, "", None, None, None, None)  # an empty string stays a string, not NULL
    assert got[4][1] == "Zoë ✓" and got[4][2] == -0.0025 and got[4][3] is False
    assert got[4][4:6] == (dt.date(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert ledger(pg_conn) == [("orders", HASH, "orders", 1, 5)]


def test_special_floats_nulls_and_non_utc_datetimes(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    frame = pl.DataFrame(
        {
            "order_id": [1, 2, 3],
            "customer": [None, "", "x"],
            "amount": [float("inf"), float("-inf"), None],
            "paid": [None, True, False],
            "order_date": [None, dt.date(2024, 1, 1), dt.date(2024, 1, 2)],
            "created_at": [dt.datetime(2024, 6, 1, 12), None, dt.datetime(2024, 6, 1, 12, 0, 0, 1)],
        },
        schema_overrides={"created_at": pl.Datetime("ns")},
    ).with_columns(pl.col("created_at").dt.replace_time_zone("Europe/Paris"))  # 12:00 in Paris = 10:00 UTC
    make_connector(pg_database).write(FileWrite("orders", HASH, 1, frame))
    got = pg_conn.execute(
        "SELECT customer, amount, paid, order_date, created_at FROM orders ORDER BY order_id"
    ).fetchall()
    assert got[0] == (None, math.inf, None, None, dt.datetime(2024, 6, 1, 10, tzinfo=UTC))
    assert got[1] == ("", -math.inf, True, dt.date(2024, 1, 1), None)
    assert got[2] == ("x", None, False, dt.date(2024, 1, 2), dt.datetime(2024, 6, 1, 10, 0, 0, 1, tzinfo=UTC))


def test_many_copy_chunks_each_row_once(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgc, "COPY_CHUNK_ROWS", 7)
    steps: list[str] = []
    monkeypatch.setattr(pgc, "checkpoint", steps.append)
    conn = make_connector(pg_database)
    assert conn.write(FileWrite("orders", HASH, 1, orders(100))).rows_written == 100
    assert steps == ["mid_insert"]
    assert pg_conn.execute("SELECT count(*), count(DISTINCT order_id) FROM orders").fetchone() == (100, 100)


def test_prepare_twice_and_empty_file(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    conn.prepare()
    conn.write(FileWrite("orders", HASH, 1, orders(5)))
    assert conn.write(FileWrite("orders", HASH, 2, orders(0))).rows_written == 0
    assert rows_by_token(pg_conn) == {}
    assert ledger(pg_conn) == [("orders", HASH, "orders", 2, 0)]


def test_existing_table_with_other_types_is_loaded_through_csv(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    """Binary COPY needs exact types; a table of the user's own with compatible ones still loads."""
    pg_conn.execute(
        "CREATE TABLE orders (order_id INTEGER, customer VARCHAR(20), amount NUMERIC(12, 2), paid BOOLEAN, "
        "order_date TIMESTAMP, created_at TIMESTAMP, note TEXT DEFAULT 'theirs', "
        "_filedge_file_hash TEXT NOT NULL, _filedge_claim_token BIGINT NOT NULL)"
    )
    conn = make_connector(pg_database)
    assert pgc.binary_plan(orders(1), conn._table_types or {}) is None
    conn.write(FileWrite("orders", HASH, 1, orders(3)))
    conn.write(FileWrite("orders", HASH, 2, orders(3)))
    got = pg_conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall()
    assert [row[:7] for row in got] == [
        (
            i,
            f"c-{i}",
            pytest.approx(i * 1.5),
            i % 2 == 0,
            dt.datetime(2024, 1, i),
            dt.datetime(2024, 1, 1, 12, 0, i - 1),
            "theirs",
        )
        for i in (1, 2, 3)
    ]
    assert rows_by_token(pg_conn) == {2: 3}


def test_dates_into_timestamptz_columns_are_utc_midnight_whatever_the_server_zone(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    pg_conn.execute(f"ALTER DATABASE {pg_database.rsplit('/', 1)[1]} SET TimeZone = 'America/New_York'")
    pg_conn.execute(
        "CREATE TABLE orders (order_id BIGINT, customer TEXT, amount FLOAT8, paid BOOLEAN, "
        "order_date TIMESTAMPTZ, created_at TIMESTAMPTZ, "
        "_filedge_file_hash TEXT NOT NULL, _filedge_claim_token BIGINT NOT NULL)"
    )
    make_connector(pg_database).write(FileWrite("orders", HASH, 1, orders(1)))
    got = pg_conn.execute("SELECT order_date, created_at FROM orders").fetchone()
    assert got == (dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, 12, tzinfo=UTC))


def test_table_altered_after_prepare_is_transient_then_loads(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    pg_conn.execute("ALTER TABLE orders ALTER COLUMN order_id TYPE INTEGER")
    with pytest.raises(TransientError, match="binary"):
        conn.write(FileWrite("orders", HASH, 1, orders(3)))
    assert conn.write(FileWrite("orders", HASH, 2, orders(3))).rows_written == 3  # types read again: CSV
    assert rows_by_token(pg_conn) == {2: 3}


def test_binary_plan_covers_the_types_filedge_creates() -> None:
    table = {
        "order_id": "bigint",
        "customer": "text",
        "amount": "double precision",
        "paid": "boolean",
        "order_date": "date",
        "created_at": "timestamp with time zone",
    }
    plan = pgc.binary_plan(orders(1), table)
    assert plan is not None and plan[0] == ["int8", "text", "float8", "bool", "int4", "int8"]
    assert pgc.binary_plan(orders(1), {**table, "amount": "numeric"}) is None
    ancient = orders(1).with_columns(pl.lit(dt.date(1, 1, 1)).dt.offset_by("-5000y").alias("order_date"))
    assert pgc.binary_plan(ancient, table) is None  # out of PostgreSQL's range: CSV, the server says why


# -- fencing --------------------------------------------------------------------------------


def test_rewrite_with_newer_token_leaves_rows_once(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    conn.write(FileWrite("orders", HASH, 1, orders(10, "first")))
    conn.write(FileWrite("orders", "cd" * 32, 1, orders(4)))  # another file: untouched
    assert conn.write(FileWrite("orders", HASH, 2, orders(10, "second"))).rows_written == 10

    assert rows_by_token(pg_conn) == {2: 10}
    customers = {
        r[0] for r in pg_conn.execute("SELECT customer FROM orders WHERE _filedge_file_hash = %s", (HASH,))
    }
    assert customers == {f"second-{i}" for i in range(1, 11)}
    assert rows_by_token(pg_conn, file_hash="cd" * 32) == {1: 4}
    assert ledger(pg_conn) == [("orders", HASH, "orders", 2, 10), ("orders", "cd" * 32, "orders", 1, 4)]


def test_rewrite_with_same_token_leaves_rows_once(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    conn.write(FileWrite("orders", HASH, 3, orders(10)))
    conn.write(FileWrite("orders", HASH, 3, orders(10)))
    assert rows_by_token(pg_conn) == {3: 10}
    assert pg_conn.execute("SELECT count(DISTINCT order_id) FROM orders").fetchone() == (10,)


def test_older_token_is_refused_and_rows_untouched(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    conn.write(FileWrite("orders", HASH, 5, orders(10, "owner")))
    before = pg_conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall()

    with pytest.raises(LeaseLost, match=r"write refused: claim token 4 is older than 5"):
        conn.write(FileWrite("orders", HASH, 4, orders(3, "zombie")))

    assert pg_conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall() == before
    assert ledger(pg_conn) == [("orders", HASH, "orders", 5, 10)]
    conn.write(FileWrite("orders", HASH, 6, orders(2)))  # the connection is still usable
    assert rows_by_token(pg_conn) == {6: 2}


def test_guard_refuses_a_token_that_became_old_during_the_copy(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early check passed, but a newer writer committed while the rows were being copied."""
    zombie = make_connector(pg_database)
    newer = make_connector(pg_database)

    def newer_commits(step: str) -> None:
        if step == "mid_insert":
            monkeypatch.setattr(pgc, "checkpoint", lambda step: None)
            newer.write(FileWrite("orders", HASH, 2, orders(4, "newer")))

    monkeypatch.setattr(pgc, "checkpoint", newer_commits)
    with pytest.raises(LeaseLost, match="claim token 1 is older than 2"):
        zombie.write(FileWrite("orders", HASH, 1, orders(6, "zombie")))
    assert rows_by_token(pg_conn) == {2: 4}


# -- schema-qualified tables and existing tables --------------------------------------------


def test_schema_qualified_table(pg_database: str, pg_conn: psycopg.Connection, make_connector: Any) -> None:
    conn = make_connector(pg_database, dest_table="analytics.orders", name="sales")
    assert conn.write(FileWrite("sales", HASH, 1, orders(3))).rows_written == 3
    assert conn.write(FileWrite("sales", HASH, 2, orders(3))).rows_written == 3

    assert rows_by_token(pg_conn, "analytics.orders") == {2: 3}
    assert ledger(pg_conn, "analytics") == [("sales", HASH, "analytics.orders", 2, 3)]
    public = pg_conn.execute(
        "SELECT to_regclass('public._filedge_loads'), to_regclass('public.orders')"
    ).fetchone()
    assert public == (None, None)


def test_concurrent_prepare_from_many_processes(pg_database: str, pg_conn: psycopg.Connection) -> None:
    script = textwrap.dedent(
        """
        import json, sys, time
        from filedge_core.config import parse_pipeline
        from filedge_core.connectors import open_connector
        config, start = json.loads(sys.argv[1]), float(sys.argv[2])
        conn = open_connector(parse_pipeline(config))
        time.sleep(max(0.0, start - time.time()))
        conn.prepare()
        conn.close()
        """
    )
    config = make_config(pg_database, dest_table="race.orders", name="race").model_dump(mode="json")
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(config), str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(12)
    ]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0] * len(procs), [err for _, err in results if err]
    assert pg_conn.execute("SELECT to_regclass('race.orders') IS NOT NULL").fetchone() == (True,)


def test_existing_table_without_filedge_columns_is_refused(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    pg_conn.execute("CREATE TABLE orders (order_id BIGINT, customer TEXT)")
    with pytest.raises(ConfigError, match="has no _filedge_file_hash column"):
        make_connector(pg_database)


def test_existing_table_missing_a_column_is_refused(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    make_connector(pg_database)
    pg_conn.execute("ALTER TABLE orders DROP COLUMN paid")
    with pytest.raises(ConfigError, match="already exists without column 'paid'"):
        make_connector(pg_database)


def test_existing_column_of_the_wrong_type_is_refused(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    make_connector(pg_database)
    pg_conn.execute("ALTER TABLE orders ALTER COLUMN amount TYPE TEXT")
    with pytest.raises(ConfigError, match="column 'amount' of table 'orders' is text"):
        make_connector(pg_database)


def test_table_of_another_pipeline_is_refused(pg_database: str, make_connector: Any) -> None:
    make_connector(pg_database, name="first").write(FileWrite("first", HASH, 1, orders(1)))
    with pytest.raises(ConfigError, match="already loaded by pipeline 'first'"):
        make_connector(pg_database, name="second")


# -- the zombie -----------------------------------------------------------------------------

ZOMBIE = textwrap.dedent(
    """
    import json, os, signal, sys
    import polars as pl
    from filedge_core.config import parse_pipeline
    from filedge_core.connectors import FileWrite, postgresql as pgc
    from filedge_core.errors import LeaseLost

    config, file_hash, rows, mode = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pgc.COPY_CHUNK_ROWS = 25  # several pieces: stopped after the first, the COPY is unfinished
    if mode == "self-stop":
        def stop_mid_insert(step):
            if step == "mid_insert":
                print("mid_insert", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
        pgc.checkpoint = stop_mid_insert
    frame = pl.DataFrame({"order_id": list(range(1, rows + 1)), "customer": ["zombie"] * rows})
    conn = pgc.PostgresConnector(parse_pipeline(config))
    conn.prepare()
    print("prepared", flush=True)
    try:
        conn.write(FileWrite(config["name"], file_hash, 1, frame))
    except LeaseLost as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(LEASE_LOST_EXIT)
    sys.exit(0)
    """
).replace("LEASE_LOST_EXIT", str(LEASE_LOST_EXIT))


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``proc`` prints, read by a thread (so that waiting for one can time out)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["self-stop", "pause-then-sigstop"])
def test_zombie_stopped_mid_copy_is_fenced(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any, mode: str
) -> None:
    """A (token 1) is SIGSTOPped in the middle of its COPY; B (token 2) writes the same file and
    commits meanwhile; A resumes and is refused; the table holds B's rows, once.

    ``self-stop``: A stops itself at the ``mid_insert`` checkpoint. ``pause-then-sigstop``: A runs
    with ``FILEDGE_TEST_PAUSE_AT=mid_insert:5`` and the test sends SIGSTOP while its COPY is open."""
    columns = [{"source": "order_id", "type": "int"}, {"source": "customer"}]
    config = make_config(pg_database, columns=columns).model_dump(mode="json")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FILEDGE_TEST_CRASH_AT", None)
    if mode == "pause-then-sigstop":
        env["FILEDGE_TEST_PAUSE_AT"] = "mid_insert:5"
    else:
        env.pop("FILEDGE_TEST_PAUSE_AT", None)
    a = subprocess.Popen(
        [sys.executable, "-c", ZOMBIE, json.dumps(config), HASH, "100", mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = _lines_of(a)
    writer: threading.Thread | None = None
    try:
        assert lines.get(timeout=60) == "prepared"

        def a_is_copying() -> bool:
            found = pg_conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'filedge' AND state = 'active' AND query LIKE 'COPY %%'"
            ).fetchone()
            return bool(found and found[0] == 1)

        if mode == "self-stop":
            assert lines.get(timeout=60) == "mid_insert"
        else:
            _wait_for(a_is_copying, "A's COPY to start")
            os.kill(a.pid, signal.SIGSTOP)
        _wait_for(lambda: _process_state(a.pid) == "T", "A to be stopped")
        assert a_is_copying(), "A should be stopped in the middle of its COPY"

        # B, the newer claim, must prepare and write while A is stopped. In a thread, because a
        # bug would block it; killing A (below) then unblocks it.
        b_frame = pl.DataFrame({"order_id": list(range(1, 101)), "customer": ["newer"] * 100})
        outcome: list[object] = []

        def newer_writer() -> None:
            b = make_connector(pg_database, columns=columns)
            outcome.append(b.write(FileWrite("orders", HASH, 2, b_frame)).rows_written)

        writer = threading.Thread(target=newer_writer, daemon=True)
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive(), "B was blocked by the stopped zombie"
        assert outcome == [100]
        assert rows_by_token(pg_conn) == {2: 100}

        os.kill(a.pid, signal.SIGCONT)
        code = a.wait(timeout=60)
        stderr = a.stderr.read() if a.stderr else ""
        assert code == LEASE_LOST_EXIT, stderr
        assert "write refused: claim token 1 is older than 2" in stderr
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        if writer is not None:
            writer.join(timeout=30)

    assert rows_by_token(pg_conn) == {2: 100}
    assert pg_conn.execute("SELECT DISTINCT customer FROM orders").fetchall() == [("newer",)]
    assert ledger(pg_conn) == [("orders", HASH, "orders", 2, 100)]


# -- errors ---------------------------------------------------------------------------------


def test_closed_port_is_database_unavailable_with_masked_password() -> None:
    url = f"postgresql://filedge:s3cr3t-pw@127.0.0.1:{free_port()}/warehouse"
    conn = open_connector(make_config(url, patience=0.5))
    started = time.monotonic()
    with pytest.raises(DestinationUnreachable) as err:
        conn.prepare()
    assert 0.5 <= time.monotonic() - started < 5, "retried for connect_retry_seconds, then gave up"
    message = str(err.value)
    assert "s3cr3t-pw" not in message
    assert message.startswith("destination postgresql://filedge:***@127.0.0.1:")
    assert "\n" not in message and "refused" in message.lower()
    with pytest.raises(DatabaseUnavailable):
        conn.write(FileWrite("orders", HASH, 1, orders(1)))


def test_unknown_database_is_database_unavailable(pg_url: str) -> None:
    url = urlunsplit(urlsplit(pg_url)._replace(path="/no_such_database_here"))
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match='database "no_such_database_here" does not exist'):
        open_connector(make_config(url)).prepare()
    assert time.monotonic() - started < 5, "a refusal the server means is not waited out"


def test_connection_lost_mid_write_is_database_unavailable_then_recovers(
    pg_database: str,
    pg_conn: psycopg.Connection,
    make_connector: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = make_connector(pg_database)
    monkeypatch.setattr(pgc, "COPY_CHUNK_ROWS", 10)

    def kill_backend(step: str) -> None:
        assert conn._conn is not None
        pg_conn.execute("SELECT pg_terminate_backend(%s)", (conn._conn.info.backend_pid,))

    monkeypatch.setattr(pgc, "checkpoint", kill_backend)
    with pytest.raises(DatabaseUnavailable) as err:
        conn.write(FileWrite("orders", HASH, 1, orders(50)))
    assert "\n" not in str(err.value)
    assert rows_by_token(pg_conn) == {}

    monkeypatch.setattr(pgc, "checkpoint", lambda step: None)
    assert conn.write(FileWrite("orders", HASH, 2, orders(50))).rows_written == 50  # reconnects
    assert rows_by_token(pg_conn) == {2: 50}


def test_date_postgresql_cannot_hold_is_a_data_error(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    frame = orders(2).with_columns(pl.col("order_date").dt.offset_by("-7000y"))
    with pytest.raises(DataError, match="order_date"):
        conn.write(FileWrite("orders", HASH, 1, frame))
    assert rows_by_token(pg_conn) == {}


def test_bad_value_is_a_data_error_and_nothing_is_written(
    pg_database: str, pg_conn: psycopg.Connection, make_connector: Any
) -> None:
    conn = make_connector(pg_database)
    frame = orders(3).with_columns(pl.Series("customer", ["ok", "nul \x00 byte", "ok"]))
    with pytest.raises(DataError, match=r"destination postgresql://.*0x00") as err:
        conn.write(FileWrite("orders", HASH, 1, frame))
    assert "\n" not in str(err.value)
    assert rows_by_token(pg_conn) == {}
    assert ledger(pg_conn) == []
