"""What is known about one file, for `filedge show`: its audit row, every recorded attempt, and
where its rows are (counted in the destination when the pipeline's config is given)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .audit import Attempt, AuditRow, AuditStore, FileState, Outcome
from .dburl import mask
from .errors import FiledgeError, UsageError
from .identifiers import HASH_COLUMN

if TYPE_CHECKING:
    from .config import PipelineConfig


@dataclass(frozen=True)
class Destination:
    """Where a file's rows are: its table, tagged by ``hash_column``. ``rows`` and
    ``rejected_rows`` are counted only with the pipeline's config (None: not counted, or no such
    table); ``error``: why counting failed."""

    table: str
    url: str  # masked
    hash_column: str = HASH_COLUMN
    counted: bool = False
    rows: int | None = None
    rejected_table: str | None = None
    rejected_rows: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class FileReport:
    """One file of one pipeline."""

    row: AuditRow
    attempts: list[Attempt]
    destination: Destination | None

    def as_dict(self) -> dict[str, Any]:
        """One JSON-ready object: the audit columns, ``history`` and ``destination``."""
        data = {k: _json(v) for k, v in asdict(self.row).items()}
        data["history"] = [
            {**{k: _json(v) for k, v in asdict(a).items()}, "duration_s": a.duration_s} for a in self.attempts
        ]
        data["destination"] = asdict(self.destination) if self.destination else None
        return data

    def lines(self) -> list[str]:
        """The report as text, one item per line (callers keep each to one line)."""
        row = self.row
        out = [
            f"file:         {row.file_hash}",
            f"pipeline:     {row.pipeline}",
            f"path:         {row.path}",
            f"size:         {row.size:,} bytes",
            f"state:        {row.state}" + (f" ({row.error_kind})" if row.error_kind else ""),
            f"attempts:     {row.attempts}",
            f"rows:         {_count(row.rows_written)}",
            f"rejected:     {_count(row.rows_rejected)}",
            f"last_error:   {row.last_error or '-'}",
            f"config_hash:  {_short(row.config_hash)}",
            f"created_at:   {_when(row.created_at)}",
            f"committed_at: {_when(row.committed_at)}",
        ]
        if row.state == FileState.PROCESSING.value:
            out.append(f"lease:        {row.claimed_by} since {_when(row.claimed_at)}")
        out.extend(self._destination_lines())
        return out + self.history_lines()

    def history_lines(self) -> list[str]:
        """The attempt history: a heading line, then one line per attempt, oldest first."""
        if not self.attempts:
            return ["history:      none recorded (pruned, or older than the attempt history)"]
        out = [f"history:      {len(self.attempts)} attempt(s)"]
        out.extend("  " + "  ".join(self._attempt_fields(attempt)) for attempt in self.attempts)
        return out

    def _destination_lines(self) -> list[str]:
        dest = self.destination
        if dest is None:
            return ["destination:  unknown (no attempt recorded it; give --config)"]
        out = [f"destination:  table {dest.table} in {dest.url}, rows where {dest.hash_column} = '{self.row.file_hash}'"]
        if dest.error:
            out.append(f"rows there:   not counted: {dest.error}")
        elif dest.counted:
            found = "no such table" if dest.rows is None else f"{dest.rows:,}"
            if dest.rejected_rows is not None:
                found += f" (and {dest.rejected_rows:,} in {dest.rejected_table})"
            out.append(f"rows there:   {found}")
        return out

    def _attempt_fields(self, attempt: Attempt) -> list[str]:
        outcome = attempt.outcome or (
            "running" if self.row.state == FileState.PROCESSING.value and attempt.claim_token == self.row.claim_token
            else "open"
        )
        if attempt.error_kind and attempt.outcome != Outcome.LOST.value:
            outcome += f" ({attempt.error_kind})"
        duration = attempt.duration_s
        fields = [
            f"token {attempt.claim_token}",
            _when(attempt.started_at),
            attempt.worker or "-",
            outcome,
            "-" if duration is None else f"{duration:.3f} s",
            f"rows={_count(attempt.rows_written)}",
        ]
        if attempt.rows_rejected:
            fields.append(f"rejected={attempt.rows_rejected:,}")
        fields.append(f"config={_short(attempt.config_hash)}")
        if attempt.error:
            fields.append(attempt.error)
        return fields


def file_report(
    audit: AuditStore, prefix: str, pipeline: str | None = None, config: PipelineConfig | None = None
) -> FileReport:
    """The report on the file whose hash starts with ``prefix`` (UsageError if none or several
    match). With ``config``, its pipeline is the one, and the destination is asked for the rows."""
    if config is not None:
        if pipeline and pipeline != config.name:
            raise UsageError(f"--pipeline {pipeline}: the pipeline of --config is {config.name!r}")
        pipeline = config.name
    (file_hash,) = audit.resolve_hashes([prefix], pipeline, label="hash")
    rows = audit.rows(pipeline=pipeline, file_hashes=[file_hash])
    if len(rows) > 1:
        names = ", ".join(row.pipeline for row in rows)
        raise UsageError(f"hash {prefix}: the file is in more than one pipeline ({names}); give --pipeline")
    row = rows[0]
    attempts = audit.attempts(row.pipeline, file_hash)
    destination = _counted(config, file_hash) if config is not None else _recorded(attempts)
    return FileReport(row, attempts, destination)


def _recorded(attempts: list[Attempt]) -> Destination | None:
    """The destination the latest attempt recorded (a committed one is the last attempt)."""
    known = [a for a in attempts if a.dest_table]
    if not known:
        return None
    return Destination(known[-1].dest_table, known[-1].dest_url or "-")


def _counted(config: PipelineConfig, file_hash: str) -> Destination:
    """The config's destination, with the file's rows counted there (read only)."""
    from .connectors import open_connector

    dest = Destination(config.dest_table, mask(config.connector.url), counted=True, rejected_table=config.rejected_table)
    connector = open_connector(config)
    try:
        stored = connector.stored_rows(file_hash)
    except FiledgeError as exc:
        return Destination(**{**asdict(dest), "error": mask(exc.message)})
    finally:
        connector.close()
    return Destination(**{**asdict(dest), "rows": stored.rows, "rejected_rows": stored.rejected})


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _short(config_hash: str | None) -> str:
    return config_hash[:12] if config_hash else "-"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
