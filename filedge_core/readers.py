"""Parsing a file, one format each, into raw batches: all-string frames of whole records.

Each batch comes from one record-aligned chunk of the file (``source.TextChunks``), so memory
is bounded by the batch size, not the file size. Values stay exactly as written (empty fields
are ""); typing is ``casting``'s job. Problems with the file's structure are ``DataError``s
naming the line; in quarantine mode a malformed record becomes a ``Reject`` instead."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl

from .config import PipelineConfig
from .errors import DataError, first_line
from .source import Chunk, Readable, TextChunks

RAW_PREVIEW_CHARS = 1000  # a malformed record is kept in the rejects table up to this length
# Python's csv refuses fields over 128 KiB by default; records are bounded by the chunker.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Reject:
    """A whole record that could not be read as a row (quarantine mode)."""

    row: int  # 0-based data row index in the file
    line: int | None
    raw: str
    reason: str


@dataclass
class RawBatch:
    """A frame of raw string values and where its rows are in the file.

    ``rows``/``lines``: each frame row's 0-based data row index and 1-based starting line;
    None means ``rows`` run on from ``row_offset`` and ``lines`` are looked up when needed."""

    frame: pl.DataFrame
    row_offset: int
    chunk: Chunk | None = None
    header_here: bool = False
    rows: list[int] | None = None
    lines: list[int] | None = None
    rejects: list[Reject] = field(default_factory=list)
    records: int = 0  # data records consumed (rows plus rejected records)

    def row_numbers(self, local: Sequence[int]) -> list[int]:
        if self.rows is None:
            return [self.row_offset + i for i in local]
        return [self.rows[i] for i in local]


class FormatReader:
    """Yields ``RawBatch``es of one file; ``line_of`` finds where rows start (for messages)."""

    def __init__(self, config: PipelineConfig, quarantine: bool) -> None:
        self.config = config
        self.quarantine = quarantine

    def batches(self, stream: Readable, batch_bytes: int) -> Iterator[RawBatch]:
        raise NotImplementedError

    def line_numbers(self, batch: RawBatch, local: Sequence[int]) -> list[int | None]:
        if batch.lines is not None:
            return [batch.lines[i] for i in local]
        return [None for _ in local]


# -- delimited text ---------------------------------------------------------------------------


def _csv_reader(text: bytes, config: PipelineConfig) -> "csv._reader":
    quote = config.csv.quote_char
    return csv.reader(
        io.StringIO(text.decode("utf-8", errors="replace"), newline=""),
        delimiter=config.delimiter,
        quotechar=quote or '"',
        quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
        strict=True,
    )


def csv_records(chunk: Chunk, config: PipelineConfig) -> Iterator[tuple[int, list[str]]]:
    """Each record of a chunk and the line it starts on (Python's csv: slow, exact)."""
    reader = _csv_reader(chunk.data, config)
    start = chunk.first_line
    try:
        for row in reader:
            yield start, row
            start = chunk.first_line + reader.line_num
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):  # the record's opening quote is never closed
            raise DataError(f"line {start}: bad quoting: a quoted field is never closed") from None
        raise DataError(f"line {chunk.first_line - 1 + reader.line_num}: bad quoting: {exc}") from None


def _fields(count: int) -> str:
    return "a blank line" if count == 0 else f"{count} field{'s' if count != 1 else ''}"


def invalid_utf8(data: bytes, first_line: int = 1) -> str | None:
    """Where ``data`` stops being UTF-8, as a message; None if it is valid."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        return (
            f"line {line}: invalid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "set csv.encoding if the file is not UTF-8"
        )
    return None


class CsvReader(FormatReader):
    """csv and tsv: polars parses each chunk; Python's csv explains what polars refuses."""

    def _first(self) -> str:
        return "the header" if self.config.csv.has_header else "the first row"

    def _records(self, chunk: Chunk, header_here: bool) -> Iterator[tuple[int, list[str]]]:
        """The chunk's records with their lines; blank lines before a header are skipped, as
        polars skips them."""
        records = csv_records(chunk, self.config)
        if header_here:
            for line, fields in records:
                if fields:
                    yield line, fields
                    break
        yield from records

    def _structure_problem(self, chunk: Chunk, width: int | None, header_here: bool) -> str | None:
        """The first record whose field count differs, or whose quoting is broken."""
        for line, row in self._records(chunk, header_here):
            if width is None:
                width = len(row)
            elif len(row) != width:
                return f"line {line}: {_fields(len(row))}, but {self._first()} has {width}"
        return None

    def _complete(self, chunk: Chunk, frame: pl.DataFrame, header_here: bool) -> bool:
        """Whether every record has all its fields (polars pads short ones with "").

        Without quotes in the chunk the total number of delimiters proves it (polars already
        refuses long records), for the cost of one byte count."""
        text, width = chunk.data, frame.width
        if width <= 1:
            return not (b"\n\n" in text or b"\n\r\n" in text or text.startswith((b"\n", b"\r\n")))
        quote = self.config.csv.quote_char
        if quote is None or quote.encode() not in text:
            records = frame.height + (1 if header_here else 0)
            return text.count(self.config.delimiter.encode()) == records * (width - 1)
        return False

    def _salvage(self, chunk: Chunk, names: list[str], header_here: bool, row_offset: int) -> RawBatch:
        """Quarantine mode: the well-formed records of a chunk as a frame, the others as rejects."""
        values: list[list[str]] = [[] for _ in names]
        rows, lines, rejects = [], [], []
        index = row_offset
        records = self._records(chunk, header_here)
        if header_here:
            next(records, None)
        for line, fields in records:
            if len(fields) == len(names):
                for column, value in zip(values, fields):
                    column.append(value)
                rows.append(index)
                lines.append(line)
            else:
                raw = self.config.delimiter.join(fields)[:RAW_PREVIEW_CHARS]
                reason = f"{_fields(len(fields))}, but {self._first()} has {len(names)}"
                rejects.append(Reject(index, line, raw, reason))
            index += 1
        frame = pl.DataFrame(dict(zip(names, values)), schema={n: pl.String for n in names})
        return RawBatch(frame, row_offset, chunk, header_here, rows, lines, rejects, index - row_offset)

    def batches(self, stream: Readable, batch_bytes: int) -> Iterator[RawBatch]:
        options = self.config.csv
        quote = options.quote_char.encode() if options.quote_char else None
        chunks = TextChunks(stream, options.encoding, quote, batch_bytes, options.skip_rows)
        names: list[str] | None = None
        row_offset = 0
        for chunk in chunks:
            if chunk.first and (not chunk.data or chunk.data.isspace()):
                raise DataError("file is empty (no header row)")
            if not chunk.data:
                continue
            header_here = chunk.first and options.has_header
            try:
                frame = pl.read_csv(
                    io.BytesIO(chunk.data),
                    separator=self.config.delimiter,
                    quote_char=options.quote_char,
                    has_header=header_here,
                    schema=None if names is None else {n: pl.String for n in names},
                    infer_schema=False,
                    empty_string_is_null=False,
                )
                complete = self._complete(chunk, frame, header_here)
            except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
                frame, complete = None, False
                failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if names is None:
                names = self._names(chunk, frame, header_here)
            if not complete:
                utf8 = invalid_utf8(chunk.data, chunk.first_line)
                if utf8:
                    raise DataError(utf8)
                problem = self._structure_problem(chunk, len(names) if names else None, header_here)
                if problem is not None and not (self.quarantine and names):
                    raise DataError(problem)
                if problem is None and frame is None:
                    raise DataError(f"cannot parse the file: {failure}")
                if problem is not None:
                    batch = self._salvage(chunk, names, header_here, row_offset)
                    row_offset += batch.records
                    yield self._nulls(batch)
                    continue
            assert frame is not None
            frame.columns = names
            row_offset += frame.height
            yield self._nulls(RawBatch(frame, row_offset - frame.height, chunk, header_here, records=frame.height))

    def _names(self, chunk: Chunk, frame: pl.DataFrame | None, header_here: bool) -> list[str]:
        """The column names: the header's (as polars read it) or ``column_1``..."""
        if frame is not None:
            return list(frame.columns) if header_here else [f"column_{i + 1}" for i in range(frame.width)]
        first = next(self._records(chunk, header_here), None)
        if first is None:
            return []
        fields = first[1]
        return list(fields) if header_here else [f"column_{i + 1}" for i in range(len(fields))]

    def _nulls(self, batch: RawBatch) -> RawBatch:
        """``csv.null_values`` become NULL."""
        values = self.config.csv.null_values
        if values and batch.frame.height:
            nulls = pl.lit(pl.Series(values, dtype=pl.String)).implode()
            batch.frame = batch.frame.with_columns(
                pl.when(pl.col(c).is_in(nulls)).then(None).otherwise(pl.col(c)).alias(c)
                for c in batch.frame.columns
            )
        return batch

    def line_numbers(self, batch: RawBatch, local: Sequence[int]) -> list[int | None]:
        if batch.lines is not None or batch.chunk is None:
            return super().line_numbers(batch, local)
        chunk = batch.chunk
        start = 1 if batch.header_here else 0
        quote = self.config.csv.quote_char
        if quote is None or quote.encode() not in chunk.data:
            # one record per line, after the header and any blank lines before it
            blank = chunk.data[: len(chunk.data) - len(chunk.data.lstrip(b"\r\n"))].count(b"\n")
            first = chunk.first_line + start + (blank if batch.header_here else 0)
            return [first + i for i in local]
        starts = [line for line, _ in self._records(chunk, batch.header_here)][start:]
        batch.lines = starts
        return [starts[i] if i < len(starts) else None for i in local]


# -- JSON lines -------------------------------------------------------------------------------


class JsonlReader(FormatReader):
    """One JSON object per line; each configured key read as its JSON text, numbers exactly as
    written (``1.10`` stays ``1.10``: a decimal is never rounded through a double)."""

    def batches(self, stream: Readable, batch_bytes: int) -> Iterator[RawBatch]:
        import json

        keys = [column.source for column in self.config.columns]
        row_offset = 0
        for chunk in TextChunks(stream, self.config.csv.encoding, None, batch_bytes):
            if chunk.first and not chunk.data.strip():
                raise DataError("file is empty (no JSON records)")
            invalid = invalid_utf8(chunk.data, chunk.first_line)
            if invalid:
                raise DataError(invalid)
            values: dict[str, list[str | None]] = {key: [] for key in keys}
            rows, lines, rejects = [], [], []
            index = row_offset
            for number, line in enumerate(chunk.data.split(b"\n"), start=chunk.first_line):
                if not line.strip():
                    continue
                try:
                    record = self._record(line, number, keys, json)
                except DataError as exc:
                    if not self.quarantine:
                        raise
                    text = line.decode("utf-8", errors="replace").strip()[:RAW_PREVIEW_CHARS]
                    rejects.append(Reject(index, number, text, str(exc).split(": ", 1)[1]))
                else:
                    for key in keys:
                        values[key].append(record[key])
                    rows.append(index)
                    lines.append(number)
                index += 1
            frame = pl.DataFrame(values, schema={key: pl.String for key in keys})
            yield RawBatch(frame, row_offset, chunk, False, rows, lines, rejects, index - row_offset)
            row_offset = index

    @staticmethod
    def _record(line: bytes, number: int, keys: list[str], json: object) -> dict[str, str | None]:
        try:
            record = json.loads(line, parse_float=str, parse_int=str, parse_constant=str)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise DataError(f"line {number}: invalid JSON: {exc}") from None
        except RecursionError:
            raise DataError(f"line {number}: invalid JSON: nested too deeply") from None
        if not isinstance(record, dict):
            raise DataError(f"line {number}: expected a JSON object, found {type(record).__name__}")
        out: dict[str, str | None] = {}
        escapes = b"\\u" in line  # only \u escapes can make text no database stores
        for key in keys:
            value = record.get(key)
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (dict, list)):
                raise DataError(f"line {number}: key {key!r} holds a nested value; only scalars can be loaded")
            elif escapes and isinstance(value, str):
                _check_text(value, key, number)
            out[key] = value
        return out


def _check_text(value: str, key: str, number: int) -> None:
    """A JSON string a database can store: no NUL character, no lone UTF-16 surrogate."""
    if "\x00" in value:
        raise DataError(f"line {number}: key {key!r} holds a NUL character (\\u0000), which databases cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"line {number}: key {key!r} holds an unpaired surrogate escape (e.g. \\ud800)") from None


# -- Parquet ----------------------------------------------------------------------------------


class ParquetReader(FormatReader):
    """Parquet needs random access: the stream is copied to a private temporary file as it is
    read (and hashed), then read back in row batches, every value as text so that all formats
    are validated alike."""

    def batches(self, stream: Readable, batch_bytes: int) -> Iterator[RawBatch]:
        with tempfile.TemporaryDirectory(prefix="filedge-") as spool_dir:
            spool = os.path.join(spool_dir, "file.parquet")
            with open(spool, "wb") as out:
                while piece := stream.read(1 << 20):
                    out.write(piece)
            try:
                lazy = pl.scan_parquet(spool)
                schema = lazy.collect_schema()
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise DataError(f"not a readable Parquet file: {first_line(exc)}") from None
            nested = [c.source for c in self.config.columns if c.source in schema and schema[c.source].is_nested()]
            if nested:
                raise DataError(
                    f"column {nested[0]!r} holds nested values ({schema[nested[0]]}); only scalars can be loaded"
                )
            exprs = []
            for name, dtype in schema.items():
                if isinstance(dtype, pl.Datetime) and dtype.time_zone:
                    exprs.append(
                        pl.col(name).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00")
                    )
                elif dtype.is_nested():
                    exprs.append(pl.col(name))  # not configured (checked above): passed through
                else:
                    exprs.append(pl.col(name).cast(pl.String))
            rows_per_batch = max(1, batch_bytes // 100)
            row_offset = 0
            try:
                for frame in lazy.select(exprs).collect_batches(chunk_size=rows_per_batch):
                    yield RawBatch(frame, row_offset, records=frame.height)
                    row_offset += frame.height
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise DataError(f"not a readable Parquet file: {first_line(exc)}") from None
            if row_offset == 0:
                yield RawBatch(lazy.select(exprs).head(0).collect(), 0)


_FORMAT_READERS: dict[str, type[FormatReader]] = {
    "csv": CsvReader,
    "tsv": CsvReader,
    "jsonl": JsonlReader,
    "parquet": ParquetReader,
}


def format_reader(config: PipelineConfig, quarantine: bool) -> FormatReader:
    """The reader for ``config.format``."""
    return _FORMAT_READERS[config.format](config, quarantine)
