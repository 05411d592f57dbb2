"""What a file becomes on its way to the destination: batches of typed rows and rejects.

``FileBatches`` reads one snapshot batch by batch (format reader, then casting) and applies the
pipeline's bad-row policy, the one place it is decided:

- ``on_error: fail``: any bad value fails the file. Nothing more is written once one is found,
  but reading goes on until the first ``MAX_REPORTED_ERRORS`` are known, and the ``DataError``
  lists them (row, line, column, raw value, reason).
- ``on_error: quarantine``: bad rows are left out and handed to the connector as rejects, to be
  written in the same transaction; ``max_rejected`` turns too many into a failed file."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from . import casting
from .config import PipelineConfig
from .errors import DataError
from .readers import FormatReader, RawBatch, format_reader
from .source import Snapshot, plain_stream, snapshot_of

MAX_REPORTED_ERRORS = 20
REJECT_SCHEMA = {
    "row_number": pl.Int64,
    "line_number": pl.Int64,
    "column_name": pl.String,
    "raw_value": pl.String,
    "reason": pl.String,
}


_NO_REJECTS = pl.DataFrame(schema=REJECT_SCHEMA)


def no_rejects() -> pl.DataFrame:
    """An empty rejects frame (one shared instance: frames are never modified in place)."""
    return _NO_REJECTS


@dataclass(frozen=True)
class Batch:
    """Typed rows to write, and (quarantine mode) the rejects of the same part of the file."""

    frame: pl.DataFrame
    rejects: pl.DataFrame


@dataclass(frozen=True)
class RowProblem:
    """One bad value or malformed record: 0-based data row, line (if the format has lines)."""

    row: int
    line: int | None
    column: str | None
    value: str | None
    reason: str  # as stored beside the value in the quarantine table
    message: str = ""  # the reason with the value in it, for messages (default: ``reason``)

    def describe(self) -> str:
        where = f"row {self.row + 1}" + (f" (line {self.line})" if self.line is not None else "")
        column = f", column {self.column!r}" if self.column is not None else ""
        return f"{where}{column}: {self.message or self.reason}"


def describe_problems(problems: Sequence[RowProblem], limit_reached: bool = False) -> str:
    """``row 2 (line 3), column 'amount': 'abc' is not a valid float; ...`` (one line)."""
    text = "; ".join(p.describe() for p in problems)
    if limit_reached:
        text += f" (stopped at the first {MAX_REPORTED_ERRORS} errors)"
    return text


class FileBatches:
    """The batches of one file, under the pipeline's bad-row policy.

    Reaching the end proves the bytes read are the claimed bytes (``FileChanged`` otherwise),
    and a ``DataError`` met earlier is re-checked the same way first: a file rewritten while it
    was read is released, not failed. ``check``: called before each batch is handed over (the
    runner raises ``LeaseLost`` from it when the lease is gone)."""

    def __init__(
        self,
        snapshot: Snapshot,
        config: PipelineConfig,
        batch_bytes: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.batch_bytes = batch_bytes or config.batch_bytes
        self.check = check
        self.quarantine = config.on_error == "quarantine"
        self.records = 0  # data records read (rows written + rows rejected)
        self.rows_rejected = 0
        self.problems: list[RowProblem] = []

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from self._batches()
        except DataError:
            self.snapshot.finish()  # FileChanged, if that is what really happened
            raise
        self.snapshot.finish()

    def _batches(self) -> Iterator[Batch]:
        reader = format_reader(self.config, self.quarantine)
        columns = self.config.columns
        checked = False
        for raw in reader.batches(plain_stream(self.snapshot), self.batch_bytes):
            if not checked:
                casting.check_columns(raw.frame.columns, columns, self.config.strict_columns)
                checked = True
            self.records += raw.records
            if self.quarantine:
                batch = self._quarantine(reader, raw)
            else:
                batch = self._fail_fast(reader, raw)
                if batch is None:
                    if len(self.problems) >= MAX_REPORTED_ERRORS:
                        break
                    continue
            if self.check is not None:
                self.check()
            yield batch
        if self.problems and not self.quarantine:
            shown = self.problems[:MAX_REPORTED_ERRORS]
            raise DataError(describe_problems(shown, len(self.problems) >= MAX_REPORTED_ERRORS))
        self._check_share()

    # -- on_error: fail ---------------------------------------------------------------------

    def _fail_fast(self, reader: FormatReader, raw: RawBatch) -> Batch | None:
        """The typed batch, or None once any bad value is known (its problems recorded)."""
        left = MAX_REPORTED_ERRORS - len(self.problems)
        checked = casting.validate(raw.frame, self.config.columns, limit=left)
        if checked.bad is not None:
            self.problems.extend(self._row_problems(reader, raw, checked.problems))
        if self.problems:
            return None
        return Batch(checked.typed, no_rejects())

    def _row_problems(self, reader: FormatReader, raw: RawBatch, problems: pl.DataFrame) -> list[RowProblem]:
        local = problems["row"].to_list()
        rows = raw.row_numbers(local)
        lines = reader.line_numbers(raw, local)
        specs = {c.source: c for c in self.config.columns}
        return [
            RowProblem(
                row, line, column, value,
                casting.reason(specs[column], code, value, quoted=False),
                casting.reason(specs[column], code, value, quoted=True),
            )
            for row, line, column, value, code in zip(
                rows, lines, problems["column"], problems["value"], problems["code"]
            )
        ]

    # -- on_error: quarantine ---------------------------------------------------------------

    def _quarantine(self, reader: FormatReader, raw: RawBatch) -> Batch:
        checked = casting.validate(raw.frame, self.config.columns)
        found = [RowProblem(r.row, r.line, None, r.raw, r.reason) for r in raw.rejects]
        typed = checked.typed
        if checked.bad is not None:
            found.extend(self._row_problems(reader, raw, checked.problems))
            typed = typed.filter(~checked.bad)
            self.rows_rejected += int(checked.bad.sum())
        self.rows_rejected += len(raw.rejects)
        if len(self.problems) < MAX_REPORTED_ERRORS:
            self.problems_seen(found)
        limit = self.config.max_rejected_count
        if limit is not None and self.rows_rejected > limit:
            raise DataError(
                f"{self.rows_rejected} rows rejected so far, more than max_rejected ({limit}); first: "
                + describe_problems(self.problems[:5])
            )
        rejects = pl.DataFrame(
            {
                "row_number": [p.row + 1 for p in found],
                "line_number": [p.line for p in found],
                "column_name": [p.column for p in found],
                "raw_value": [p.value for p in found],
                "reason": [p.reason for p in found],
            },
            schema=REJECT_SCHEMA,
        ).sort("row_number", maintain_order=True)
        return Batch(typed, rejects)

    def problems_seen(self, found: list[RowProblem]) -> None:
        """Keep the first problems of a quarantined file for messages (in file order)."""
        self.problems.extend(sorted(found, key=lambda p: p.row)[: MAX_REPORTED_ERRORS - len(self.problems)])

    def _check_share(self) -> None:
        percent = self.config.max_rejected_percent
        if not self.quarantine or percent is None or not self.records:
            return
        share = 100.0 * self.rows_rejected / self.records
        if share > percent:
            raise DataError(
                f"{self.rows_rejected} of {self.records} rows rejected ({share:.1f}%), more than "
                f"max_rejected ({percent:g}%); first: " + describe_problems(self.problems[:5])
            )

    @property
    def rows_written(self) -> int:
        return self.records - self.rows_rejected


def read_file(data: bytes, config: PipelineConfig, batch_bytes: int | None = None) -> pl.DataFrame:
    """All of a file's typed rows at once (``DataError`` on bad values in fail mode): for tests
    and small inputs; loads stream ``FileBatches`` instead."""
    frames = [batch.frame for batch in FileBatches(snapshot_of(data), config, batch_bytes)]
    return pl.concat(frames) if len(frames) != 1 else frames[0]


_DONE = object()


def read_ahead(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The same batches, the next one read by a background thread while the caller writes the
    current one: polars parses without the GIL, so reading overlaps a Python-bound write (the
    PostgreSQL COPY). One batch ahead at most; an error in reading is raised here, in order."""
    ahead: queue.Queue[object] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ahead.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put(exc)

    thread = threading.Thread(target=produce, name="filedge-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer finish its batch and see the stop
            try:
                ahead.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()

