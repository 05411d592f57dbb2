"""`filedge run` into PostgreSQL against the raw floor, measured in the same run.

    export FILEDGE_TEST_POSTGRES_URL=$(scripts/pg-server start /tmp/filedge-pg)
    .venv/bin/python bench/bench_run_pg.py [--rows 1000000] [--rounds 3] [--files 200 --file-rows 500]

Workload 1 — one CSV of ``--rows`` rows (string, int, float, bool, date, datetime) into PostgreSQL:
- ``filedge``: the whole `filedge run` command (process start, hashing, parsing and validation,
  audit table on the same server, ledger, COPY, commit), timed from outside;
- ``raw``: in one Python process, polars reads the same file with a schema and psycopg COPYs the
  rows (binary, typed) into a plain table in one transaction: the hand-written floor.
The ratio is rows/s(filedge) / rows/s(raw); rounds alternate and the medians are compared.

Workload 2 — ``--files`` small files of ``--file-rows`` rows, 4 worker processes
(`filedge run --workers 4`), PostgreSQL audit and destination: files/s (median of the rounds).

Each round uses a fresh scratch database (created and dropped)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILEDGE = str(Path(sys.executable).with_name("filedge"))
COLUMNS = [
    ("name", "string"), ("qty", "int"), ("amount", "float"), ("paid", "bool"), ("day", "date"), ("ts", "datetime"),
]
PG_TYPES = {"string": "text", "int": "int8", "float": "float8", "bool": "bool", "date": "date", "datetime": "timestamptz"}


def write_csv(path: Path, rows: int, start: int = 0) -> None:
    with path.open("w") as out:
        out.write(",".join(name for name, _ in COLUMNS) + "\n")
        for i in range(start, start + rows):
            out.write(f"customer-{i},{i},{i * 1.25:.2f},{'true' if i % 3 == 0 else 'false'},"
                      f"2024-{1 + i % 12:02d}-{1 + i % 28:02d},2024-01-02T03:04:{i % 60:02d}Z\n")


class Scratch:
    """A scratch database on the benchmark server."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.name = f"bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.base.rsplit("/", 1)[0] + "/" + self.name

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def pipeline(directory: Path, url: str) -> Path:
    config = {
        "format": "csv", "dest_table": "bench", "write_mode": "append",
        "connector": {"type": "postgresql", "url": url},
        "columns": [{"source": n, "type": t} for n, t in COLUMNS],
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def time_filedge(incoming: Path, url: str, *extra: str) -> float:
    config = pipeline(incoming.parent, url)
    started = time.perf_counter()
    result = subprocess.run([FILEDGE, "run", "--dir", str(incoming), "--config", str(config),
                             "--audit-db-url", url, *extra], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"filedge run failed: {result.stderr}")
    return elapsed


def time_raw(csv_path: Path, url: str) -> float:
    """polars read with a schema + psycopg binary COPY in one transaction."""
    import polars as pl

    schema = {"name": pl.String, "qty": pl.Int64, "amount": pl.Float64, "paid": pl.Boolean, "day": pl.String, "ts": pl.String}
    started = time.perf_counter()
    frame = pl.read_csv(csv_path, schema=schema).with_columns(
        pl.col("day").str.to_date("%Y-%m-%d"),
        pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"),
    )
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE raw (name text, qty bigint, amount double precision, paid boolean, day date, ts timestamptz)")
        with conn.cursor() as cur, cur.copy("COPY raw FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([PG_TYPES[t] for _, t in COLUMNS])
            for row in frame.iter_rows():
                copy.write_row(row)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--file-rows", type=int, default=500)
    args = parser.parse_args()
    base = os.environ.get("FILEDGE_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set FILEDGE_TEST_POSTGRES_URL (scripts/pg-server start DIR prints one)")

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big" / "incoming"
        big.mkdir(parents=True)
        write_csv(big / "data.csv", args.rows)
        filedge_s, raw_s = [], []
        for _ in range(args.rounds):
            with Scratch(base) as url:
                raw_s.append(time_raw(big / "data.csv", url))
            with Scratch(base) as url:
                filedge_s.append(time_filedge(big, url))
        f, r = statistics.median(filedge_s), statistics.median(raw_s)
        print(f"csv -> postgresql, {args.rows:,} rows, median of {args.rounds}:")
        print(f"  filedge run  {f:7.2f} s  {args.rows / f:10,.0f} rows/s")
        print(f"  raw COPY     {r:7.2f} s  {args.rows / r:10,.0f} rows/s")
        print(f"  ratio        {r / f:7.2f}x the raw floor (goal >= 0.7)")

        small = Path(tmp) / "small" / "incoming"
        small.mkdir(parents=True)
        for i in range(args.files):
            write_csv(small / f"f{i:05d}.csv", args.file_rows, start=i * args.file_rows)
        times = []
        for _ in range(args.rounds):
            with Scratch(base) as url:
                times.append(time_filedge(small, url, "--workers", "4"))
        t = statistics.median(times)
        print(f"{args.files} files x {args.file_rows} rows, --workers 4, postgresql audit + destination:")
        print(f"  {t:.2f} s  {args.files / t:,.1f} files/s (median of {args.rounds})")


if __name__ == "__main__":
    main()
