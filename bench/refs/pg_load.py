"""The hand-written floor into PostgreSQL: polars reads the CSV with a schema, then psycopg
``COPY ... (FORMAT binary)`` of the typed rows in one transaction.

    python bench/refs/pg_load.py FILE.csv POSTGRES_URL"""

import sys

import polars as pl
import psycopg
from _common import SCHEMA

path, url = sys.argv[1], sys.argv[2]
frame = pl.read_csv(path, schema=SCHEMA).with_columns(
    pl.col("day").str.to_date("%Y-%m-%d"),
    pl.col("created_at").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"),
)
with psycopg.connect(url) as conn:
    conn.execute(
        "CREATE TABLE t (id bigint, customer text, region text, qty bigint, amount double precision, "
        "paid boolean, day date, created_at timestamptz)"
    )
    with conn.cursor() as cur, cur.copy("COPY t FROM STDIN (FORMAT binary)") as copy:
        copy.set_types(["int8", "text", "text", "int8", "float8", "bool", "date", "timestamptz"])
        for row in frame.iter_rows():
            copy.write_row(row)
