"""The hand-written floor into SQLite: polars reads the CSV with a schema (explicit date and
datetime formats), then ``sqlite3.executemany`` in one transaction into a table with an
indexed hash column; WAL and ``synchronous=FULL``, like filedge's destination.

    python bench/refs/sqlite_load.py FILE.csv DEST.db"""

import sqlite3
import sys

import polars as pl

path, database = sys.argv[1], sys.argv[2]
schema = {
    "id": pl.Int64, "customer": pl.String, "region": pl.String, "qty": pl.Int64, "amount": pl.Float64,
    "paid": pl.Boolean, "day": pl.String, "created_at": pl.String,
}
frame = pl.read_csv(path, schema=schema).with_columns(
    pl.col("day").str.to_date("%Y-%m-%d").dt.strftime("%Y-%m-%d"),
    pl.col("created_at").str.to_datetime("%Y-%m-%dT%H:%M:%SZ").dt.strftime("%Y-%m-%d %H:%M:%S%.6f"),
    pl.lit("0" * 64).alias("file_hash"),
)
conn = sqlite3.connect(database, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = FULL")
conn.execute(
    "CREATE TABLE t (id INTEGER, customer TEXT, region TEXT, qty INTEGER, amount REAL, paid BOOLEAN, "
    "day DATE, created_at TIMESTAMP, file_hash TEXT NOT NULL)"
)
conn.execute("CREATE INDEX ix_t_hash ON t (file_hash)")
conn.execute("BEGIN")
for piece in frame.iter_slices(50_000):
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", piece.iter_rows())
conn.execute("COMMIT")
conn.close()
