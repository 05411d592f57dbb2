"""The hand-written floor into SQLite: polars reads the CSV with a schema (explicit date and
datetime formats), then ``sqlite3.executemany`` in one transaction into a table with an
indexed hash column; WAL and ``synchronous=FULL``, like filedge's destination.

    python bench/refs/sqlite_load.py FILE.csv DEST.db"""

import sys

import polars as pl
from _common import INSERT, SCHEMA, sqlite_table

path, database = sys.argv[1], sys.argv[2]
frame = pl.read_csv(path, schema=SCHEMA).with_columns(
    pl.col("day").str.to_date("%Y-%m-%d").dt.strftime("%Y-%m-%d"),
    pl.col("created_at").str.to_datetime("%Y-%m-%dT%H:%M:%SZ").dt.strftime("%Y-%m-%d %H:%M:%S%.6f"),
    pl.lit("0" * 64).alias("file_hash"),
)
conn = sqlite_table(database)
conn.execute("BEGIN")
for piece in frame.iter_slices(50_000):
    conn.executemany(INSERT, piece.iter_rows())
conn.execute("COMMIT")
conn.close()
