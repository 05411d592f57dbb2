"""COPY throughput: the PostgreSQL connector's write vs raw psycopg COPY of the same rows.

    export FILEDGE_TEST_POSTGRES_URL=$(scripts/pg-server)
    .venv/bin/python bench/bench_pg_copy.py [--rows N] [--repeat R]

Works in a scratch database (created, then dropped). Every timing is the median of R rounds (after
one warm-up round), each run into a freshly created table; for the connector, ``prepare()`` (table
creation) is not timed.

- ``connector``: ``PostgresConnector.write`` of a polars frame: early ledger check, binary COPY
  with the file hash and claim token on every row, the ledger guard, the delete, the commit.
  ``connector, CSV path``: the same with the CSV COPY it falls back to for tables of other types.
- ``raw binary``: psycopg binary COPY (``set_types`` + ``write_row``) of ``frame.iter_rows()``
  into a plain table with only the frame's columns: psycopg's own way to COPY rows.
- ``raw csv``: psycopg COPY of the frame as polars CSV, same plain table: the fastest raw path.
- ``raw csv, filedge table`` / ``raw binary, filedge table``: the same two, into a table shaped
  like the connector's (hash and token columns and their index), rows tagged alike.

The ratio is throughput(connector) / throughput(raw) = time(raw) / time(connector)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filedge_core.config import parse_pipeline  # noqa: E402
from filedge_core.connectors import FileWrite  # noqa: E402
from filedge_core.connectors import postgresql as pgc  # noqa: E402
from filedge_core.connectors.postgresql import PostgresConnector, csv_chunks  # noqa: E402

HASH = "0123456789abcdef" * 4
COLUMNS = "name TEXT, qty BIGINT, amount DOUBLE PRECISION, paid BOOLEAN, day DATE, ts TIMESTAMPTZ"
FILEDGE_COLUMNS = ', _filedge_file_hash TEXT COLLATE "C" NOT NULL, _filedge_claim_token BIGINT NOT NULL'
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"
BINARY_TYPES = ["text", "int8", "float8", "bool", "date", "timestamptz"]


def make_frame(n: int) -> pl.DataFrame:
    """``n`` rows of string/int/float/bool/date/datetime (UTC), as the CSV reader types them."""
    i = pl.int_range(0, n, dtype=pl.Int64)
    return pl.select(
        name=pl.lit("customer-") + i.cast(pl.String),
        qty=i,
        amount=i.cast(pl.Float64) * 1.25 + 0.01,
        paid=i % 3 == 0,
        day=pl.lit(dt.date(2000, 1, 1)) + pl.duration(days=i % 9000),
        ts=(pl.lit(dt.datetime(2020, 1, 1)) + pl.duration(microseconds=i * 1_000_003)).dt.replace_time_zone(
            "UTC"
        ),
    )


class Bench:
    def __init__(self, url: str, frame: pl.DataFrame, repeat: int) -> None:
        self.url = url
        self.frame = frame
        self.repeat = repeat
        self.conn = psycopg.connect(url, autocommit=True)
        config = parse_pipeline(
            {
                "name": "bench",
                "dest_table": "bench_connector",
                "connector": {"type": "postgresql", "url": url},
                "columns": [
                    {"source": "name", "type": "string"},
                    {"source": "qty", "type": "int"},
                    {"source": "amount", "type": "float"},
                    {"source": "paid", "type": "bool"},
                    {"source": "day", "type": "date"},
                    {"source": "ts", "type": "datetime"},
                ],
            }
        )
        self.connector = PostgresConnector(config)

    def _checkpoint(self) -> None:
        try:
            self.conn.execute("CHECKPOINT")  # start each run with no dirty buffers to write back
        except psycopg.Error:
            pass

    def timed(
        self, contenders: dict[str, tuple[Callable[[], None], Callable[[], None]]]
    ) -> dict[str, list[float]]:
        """Seconds of each contender's ``run`` (after its untimed ``setup``), per round.

        Rounds take every contender in turn, so that drift on the machine hits all alike; a first
        round warms up and is not counted."""
        times: dict[str, list[float]] = {label: [] for label in contenders}
        for round_ in range(self.repeat + 1):
            for label, (setup, run) in contenders.items():
                setup()
                self._checkpoint()
                start = time.perf_counter()
                run()
                if round_:
                    times[label].append(time.perf_counter() - start)
        return times

    # -- tables -------------------------------------------------------------------------------

    def plain_table(self, filedge_shape: bool = False) -> None:
        self.conn.execute("DROP TABLE IF EXISTS bench_raw")
        if filedge_shape:
            self.conn.execute(f"CREATE TABLE bench_raw ({COLUMNS}{FILEDGE_COLUMNS})")
            self.conn.execute("CREATE INDEX ON bench_raw (_filedge_file_hash, _filedge_claim_token)")
        else:
            self.conn.execute(f"CREATE TABLE bench_raw ({COLUMNS})")

    def connector_table(self) -> None:
        self.conn.execute("DROP TABLE IF EXISTS bench_connector")
        self.conn.execute("DROP TABLE IF EXISTS _filedge_loads")
        self.connector.prepare()

    # -- the contenders -----------------------------------------------------------------------

    def connector_write(self, token: int = 1) -> None:
        assert self.connector.write(FileWrite("bench", HASH, token, self.frame)) == self.frame.height

    def connector_write_csv(self) -> None:
        """The connector's CSV path (the one it takes when binary COPY cannot match the table)."""
        plan = pgc.binary_plan
        pgc.binary_plan = lambda frame, table_types: None
        try:
            self.connector_write()
        finally:
            pgc.binary_plan = plan

    def raw_binary(self, tagged: bool = False) -> None:
        types = BINARY_TYPES + (["text", "int8"] if tagged else [])
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy("COPY bench_raw FROM STDIN (FORMAT binary)") as copy:
                copy.set_types(types)
                if tagged:
                    for row in self.frame.iter_rows():
                        copy.write_row((*row, HASH, 1))
                else:
                    for row in self.frame.iter_rows():
                        copy.write_row(row)

    def raw_csv(self, tagged: bool = False) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy("COPY bench_raw FROM STDIN (FORMAT csv)") as copy:
                if tagged:
                    for chunk in csv_chunks(self.frame, HASH, 1):
                        copy.write(chunk)
                else:
                    for piece in self.frame.iter_slices(100_000):
                        copy.write(
                            piece.write_csv(include_header=False, datetime_format=DATETIME_FORMAT).encode()
                        )

    def close(self) -> None:
        self.connector.close()
        self.conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = os.environ.get("FILEDGE_TEST_POSTGRES_URL")
    if not base:
        print("set FILEDGE_TEST_POSTGRES_URL (scripts/pg-server prints one)", file=sys.stderr)
        return 2
    base = base.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"filedge_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = urlunsplit(urlsplit(base)._replace(path="/" + name))
        frame = make_frame(args.rows)
        bench = Bench(url, frame, args.repeat)
        try:

            def loaded() -> None:
                bench.connector_table()
                bench.connector_write(1)

            filedge_shape = lambda: bench.plain_table(filedge_shape=True)  # noqa: E731
            results = bench.timed(
                {
                    "connector": (bench.connector_table, bench.connector_write),
                    "connector, CSV path": (bench.connector_table, bench.connector_write_csv),
                    "raw binary": (bench.plain_table, bench.raw_binary),
                    "raw csv": (bench.plain_table, bench.raw_csv),
                    "raw binary, filedge table": (filedge_shape, lambda: bench.raw_binary(tagged=True)),
                    "raw csv, filedge table": (filedge_shape, lambda: bench.raw_csv(tagged=True)),
                    # For information: replacing a loaded file (deleting its old rows counts too).
                    "connector, replacing a loaded file": (loaded, lambda: bench.connector_write(2)),
                }
            )
        finally:
            bench.close()
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    with psycopg.connect(base) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    print(
        f"{args.rows:,} rows x 6 columns, median of {args.repeat}; PostgreSQL {server[0] if server else '?'}"
    )
    connector = statistics.median(results["connector"])
    for label, times in results.items():
        median = statistics.median(times)
        ratio = (
            "" if label.startswith("connector") else f"  connector/raw throughput = {median / connector:.2f}"
        )
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {label:36s} {median:6.2f} s  {args.rows / median / 1000:7.0f} krows/s  [{runs}]{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
