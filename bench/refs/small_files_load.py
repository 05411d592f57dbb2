"""The per-file floor into SQLite: every file parsed first (not timed), then one transaction per
file inserting its pre-parsed rows (``executemany``), no audit; WAL and ``synchronous=FULL``,
an indexed hash column, like filedge's destination. Prints the seconds of the timed loop.

    python bench/refs/small_files_load.py DIR DEST.db"""

import os
import sys
import time

import polars as pl
from _common import INSERT, SCHEMA, sqlite_table

directory, database = sys.argv[1], sys.argv[2]
parsed = []
for name in sorted(os.listdir(directory)):
    frame = pl.read_csv(os.path.join(directory, name), schema=SCHEMA)
    parsed.append((name, list(frame.with_columns(pl.lit(name).alias("file_hash")).iter_rows())))
conn = sqlite_table(database)
started = time.perf_counter()
for name, rows in parsed:
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
print(time.perf_counter() - started)
