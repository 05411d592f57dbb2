"""What the reference loaders share: the CSV's schema, and the SQLite table like filedge's."""

import sqlite3

import polars as pl

SCHEMA = {
    "id": pl.Int64, "customer": pl.String, "region": pl.String, "qty": pl.Int64, "amount": pl.Float64,
    "paid": pl.Boolean, "day": pl.String, "created_at": pl.String,
}
INSERT = "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def sqlite_table(database: str) -> sqlite3.Connection:
    """A connection set up like filedge's destination (WAL, synchronous=FULL), with the table
    and its indexed hash column."""
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE t (id INTEGER, customer TEXT, region TEXT, qty INTEGER, amount REAL, paid BOOLEAN, "
        "day DATE, created_at TIMESTAMP, file_hash TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX ix_t_hash ON t (file_hash)")
    return conn
