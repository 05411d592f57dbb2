"""What every destination connector does, and the names it shares with the others."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import polars as pl

from ..batches import Batch, no_rejects
from ..errors import ConfigError

LEDGER_TABLE = "_filedge_loads"
# upsert tables: the ``file_order`` of the file each row comes from; an older file never
# overwrites a row a newer file wrote, whatever order retries commit in.
ORDER_COLUMN = "_filedge_file_order"
# The quarantine table's columns after the file hash (``<dest_table>_rejected``).
REJECT_COLUMNS = ("row_number", "line_number", "column_name", "raw_value", "reason")
# What counts as one rejected row in the rejects table: a row with two bad values has two
# records there and counts once, as in the audit's rows_rejected.
REJECTED_ROWS = "DISTINCT row_number"


def shared_table_error(dest_table: str, other_pipeline: str) -> ConfigError:
    """Rows are tagged with the file hash only, so one table cannot serve two pipelines."""
    return ConfigError(
        f"dest_table: table {dest_table!r} is already loaded by pipeline {other_pipeline!r}; "
        "two pipelines cannot share a destination table"
    )


@dataclass(frozen=True)
class FileWrite:
    """One file's rows and the lease they are written under.

    ``rows``: a typed frame, or the file's batches (read lazily, inside the transaction).
    ``file_order``: the order of files (first seen, then path; see ``runner.file_order``).
    ``replace``: a file older than the last loaded one is superseded and writes nothing.
    ``upsert``: a row is never overwritten by an older file's row for the same key."""

    pipeline: str
    file_hash: str
    token: int
    rows: pl.DataFrame | Iterable[Batch]
    file_order: str = ""

    def batches(self) -> Iterator[Batch]:
        if isinstance(self.rows, pl.DataFrame):
            return iter([Batch(self.rows, no_rejects())])
        return iter(self.rows)


@dataclass(frozen=True)
class StoredRows:
    """A file's rows found in the destination; None where the table does not exist."""

    rows: int | None
    rejected: int | None = None


@dataclass(frozen=True)
class WriteResult:
    """What a write did: rows of the file now in the table; or, for a snapshot older than the
    one already loaded (``replace``), nothing, and which file superseded it."""

    rows_written: int
    superseded_by: str | None = None


class LedgerEntry(NamedTuple):
    """One ``_filedge_loads`` row: the last committed write of a file (a named tuple: verify
    reads one per file, and 100,000 frozen dataclasses cost half a second)."""

    claim_token: int
    row_count: int  # ``replace``: 0 once a newer snapshot replaced the file's rows
    file_order: str | None  # None in ledgers from before file orders


@dataclass(frozen=True)
class Inventory:
    """What a destination holds for one pipeline, per file hash, read in one snapshot
    (``filedge verify``). A missing database or table reads as empty."""

    ledger: dict[str, LedgerEntry]
    rows: dict[str, int]  # rows of ``dest_table`` per ``_filedge_file_hash``
    # rejected rows per hash: distinct ``row_number`` in ``<dest_table>_rejected`` (a row with
    # two bad values has two records there, and counts once in ``rows_rejected``)
    rejects: dict[str, int]


class Connector(Protocol):
    """A destination. ``write`` is idempotent per file hash and refuses stale tokens."""

    display_url: str

    def prepare(self) -> None:
        """Connect; create the table and the ledger if missing; check an existing table fits."""

    def write(self, request: FileWrite) -> WriteResult:
        """In one transaction: fence with the token, replace the file's rows as the write mode
        says, with its rejects; what was written."""

    def inventory(self) -> Inventory:
        """Read-only, in one snapshot: the pipeline's ledger rows, and one ``GROUP BY`` per table
        counting rows per file hash. Creates nothing."""

    def stored_rows(self, file_hash: str) -> StoredRows:
        """Read only (nothing is created): the file's rows in the table and in its rejects table."""

    def close(self) -> None:
        """Release the connection."""
