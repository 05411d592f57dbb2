"""The per-file floor into SQLite: every file parsed first (not timed), then one transaction per
file inserting its pre-parsed rows (``executemany``), no audit; WAL and ``synchronous=FULL``,
an indexed hash column, like filedge's destination. Prints the seconds of the timed loop.

    python bench/refs/small_files_load.py DIR DEST.db"""

import os
import sqlite3
import sys
import time

import polars as pl

directory, database = sys.argv[1], sys.argv[2]
schema = {
    "id": pl.Int64, "customer": pl.String, "region": pl.String, "qty": pl.Int64, "amount": pl.Float64,
    "paid": pl.Boolean, "day": pl.String, "created_at": pl.String,
}
parsed = []
for name in sorted(os.listdir(directory)):
    frame = pl.read_csv(os.path.join(directory, name), schema=schema)
    parsed.append((name, list(frame.with_columns(pl.lit(name).alias("file_hash")).iter_rows())))
conn = sqlite3.connect(database, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = FULL")
conn.execute(
    "CREATE TABLE t (id INTEGER, customer TEXT, region TEXT, qty INTEGER, amount REAL, paid BOOLEAN, "
    "day DATE, created_at TIMESTAMP, file_hash TEXT NOT NULL)"
)
conn.execute("CREATE INDEX ix_t_hash ON t (file_hash)")
started = time.perf_counter()
for name, rows in parsed:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
print(time.perf_counter() - started)
