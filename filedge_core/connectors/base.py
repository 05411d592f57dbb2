"""What every destination connector does, and the names it shares with the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import polars as pl

from ..errors import ConfigError

LEDGER_TABLE = "_filedge_loads"
HASH_COLUMN = "_filedge_file_hash"


def shared_table_error(dest_table: str, other_pipeline: str) -> ConfigError:
    """Rows are tagged with the file hash only, so one table cannot serve two pipelines."""
    return ConfigError(
        f"dest_table: table {dest_table!r} is already loaded by pipeline {other_pipeline!r}; "
        "two pipelines cannot share a destination table"
    )


@dataclass(frozen=True)
class FileWrite:
    """One file's rows and the lease they are written under."""

    pipeline: str
    file_hash: str
    token: int
    frame: pl.DataFrame


class Connector(Protocol):
    """A destination. ``write`` is idempotent per file hash and refuses stale tokens."""

    display_url: str

    def prepare(self) -> None:
        """Connect; create the table and the ledger if missing; check an existing table fits."""

    def write(self, request: FileWrite) -> int:
        """In one transaction: fence with the token, delete the file's rows, insert them; rows written."""

    def close(self) -> None:
        """Release the connection."""
