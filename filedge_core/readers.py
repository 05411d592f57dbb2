"""Reading a file's bytes into a typed, validated polars frame (one function per format).

Casting and validation run as polars expressions, never per row in Python. Problems are
``DataError``s that name the row, the line, the column and the value."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass

import polars as pl

from .config import ColumnSpec, PipelineConfig
from .errors import DataError

MAX_REPORTED_ERRORS = 20

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class RowProblem:
    """One bad value: 0-based data row index, source column, raw value, reason."""

    row: int
    column: str
    value: str | None
    reason: str


def _parse_datetime(stripped: pl.Expr) -> pl.Expr:
    """Every accepted datetime form, tried in turn (the general, slower path)."""
    normalized = stripped.str.replace("T", " ", literal=True).str.replace(r"[Zz]$", "+00:00")
    with_offset = normalized.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", strict=False, time_zone="UTC")
    naive = [
        normalized.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for fmt in _DATETIME_FORMATS
    ]
    date_only = normalized.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return pl.coalesce(with_offset.dt.cast_time_unit("us"), *naive, date_only)


# Single formats tried on a column's first value; the one that reads it parses the whole column
# at once, and only values it does not read go through the general path.
_FAST_DATETIME_FORMATS = (
    ("%Y-%m-%dT%H:%M:%SZ", False),
    ("%Y-%m-%dT%H:%M:%S%.fZ", False),
    ("%Y-%m-%dT%H:%M:%S%:z", True),
    ("%Y-%m-%dT%H:%M:%S%.f%:z", True),
    ("%Y-%m-%d %H:%M:%S", False),
    ("%Y-%m-%d %H:%M:%S%.f", False),
    ("%Y-%m-%dT%H:%M:%S", False),
    ("%Y-%m-%d %H:%M:%S%:z", True),
)


def _fast_datetime(stripped: pl.Expr, fmt: str, aware: bool) -> pl.Expr:
    if aware:
        return stripped.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us")
    return stripped.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")


def datetime_series(raw: pl.Series) -> pl.Series:
    """A string column as UTC datetimes (null where unreadable), fast when its format is uniform."""
    frame = raw.to_frame("v").select(pl.col("v").str.strip_chars())
    sample = frame.filter(pl.col("v") != "").head(1)
    general = _parse_datetime(pl.col("v"))
    if sample.height:
        for fmt, aware in _FAST_DATETIME_FORMATS:
            if sample.select(_fast_datetime(pl.col("v"), fmt, aware)).item() is None:
                continue
            fast = frame.select(_fast_datetime(pl.col("v"), fmt, aware)).to_series()
            left = (fast.is_null() & frame["v"].is_not_null() & (frame["v"] != "")).arg_true()
            if left.len():
                slow = frame[left].select(general).to_series()
                fast = fast.scatter(left, slow)
            return fast.alias(raw.name)
    return frame.select(general).to_series().alias(raw.name)


def _convert(column: ColumnSpec, raw: pl.Expr) -> pl.Expr:
    """Expression turning the raw string column into the configured type (null where invalid)."""
    if column.type == "string":
        return raw
    stripped = raw.str.strip_chars()
    if column.type == "int":
        return stripped.cast(pl.Int64, strict=False)
    if column.type == "float":
        # NaN and infinities are not numbers a table can compare or sum: "not a valid float".
        value = stripped.cast(pl.Float64, strict=False)
        return pl.when(value.is_nan() | value.is_infinite()).then(None).otherwise(value)
    if column.type == "bool":
        return stripped.str.to_lowercase().replace_strict(_BOOL_WORDS, default=None, return_dtype=pl.Boolean)
    if column.type == "decimal":
        assert column.precision is not None and column.scale is not None
        # polars would cut extra fraction digits off silently: such values are rejected instead.
        digits = stripped.str.extract(r"\.(\d+)", 1).str.len_chars()
        value = stripped.cast(pl.Decimal(column.precision, column.scale), strict=False)
        return pl.when(digits > column.scale).then(None).otherwise(value)
    if column.type == "date":
        return stripped.str.to_date(column.format or "%Y-%m-%d", strict=False)
    if column.type == "datetime":
        if column.format is None:
            return _parse_datetime(stripped)
        if "%z" in column.format or "%:z" in column.format:
            return stripped.str.to_datetime(column.format, strict=False, time_zone="UTC", time_unit="us")
        return stripped.str.to_datetime(column.format, strict=False, time_unit="us").dt.replace_time_zone("UTC")
    raise AssertionError(column.type)  # config validation makes this unreachable


def _empty(raw: pl.Expr) -> pl.Expr:
    return raw.is_null() | (raw.str.strip_chars() == "")


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BOM = b"\xef\xbb\xbf"


def decompress(data: bytes) -> bytes:
    """gzip and zstd content (recognized by its magic bytes) decompressed; anything else as is."""
    if data.startswith(_GZIP_MAGIC):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"corrupt gzip data: {exc}") from None
    if data.startswith(_ZSTD_MAGIC):
        import zstandard

        # Every frame (concatenated .zst files are one stream); a truncated frame is an error.
        parts, rest = [], data
        try:
            while rest:
                frame = zstandard.ZstdDecompressor().decompressobj()
                parts.append(frame.decompress(rest))
                if not frame.eof:
                    raise DataError("truncated zstd data (the last frame does not end)")
                rest = frame.unused_data
        except zstandard.ZstdError as exc:
            raise DataError(f"corrupt zstd data: {exc}") from None
        return b"".join(parts)
    return data


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def to_utf8(data: bytes, encoding: str) -> bytes:
    """The text as UTF-8 bytes for the parser; binary content is a data error."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"line {_line_of(data, nul)}: NUL byte: this is a binary file, not text")
    if encoding == "latin1":
        return data.decode("latin-1").encode("utf-8")
    if data.startswith(_BOM):
        if encoding == "utf8-sig":
            return data[len(_BOM):]
        raise DataError("the file starts with a UTF-8 byte order mark: set csv.encoding: utf8-sig")
    return data


def _invalid_utf8(data: bytes) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"line {_line_of(data, exc.start)}: invalid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "set csv.encoding if the file is not UTF-8"
        )
    return None


def _csv_rows(text: bytes, config: PipelineConfig) -> tuple[Any, int]:
    """A strict ``csv`` reader over the text after ``skip_rows`` lines, and that offset."""
    options = config.csv
    lines = io.StringIO(text.decode("utf-8", errors="replace"), newline="")
    for _ in range(options.skip_rows):
        lines.readline()
    reader = csv.reader(
        lines, delimiter=config.delimiter, quotechar=options.quote_char or '"',
        quoting=csv.QUOTE_MINIMAL if options.quote_char else csv.QUOTE_NONE, strict=True,
    )
    return reader, options.skip_rows


def _structure_problem(text: bytes, config: PipelineConfig, expected: int | None = None) -> str | None:
    """The first line whose field count differs from the first row's, or whose quoting is
    broken; None if every record is well formed. Slow (Python's csv): for diagnosis only."""
    reader, skip = _csv_rows(text, config)
    first = "the header" if config.csv.has_header else "the first row"
    start = skip + 1
    try:
        for row in reader:
            if expected is None:
                expected = len(row)
            elif len(row) != expected:
                found = "a blank line" if not row else f"{len(row)} field{'s' if len(row) != 1 else ''}"
                return f"line {start}: {found}, but {first} has {expected}"
            start = skip + reader.line_num + 1
    except csv.Error as exc:
        return f"line {skip + reader.line_num}: bad quoting: {exc}"
    return None


def _diagnose(text: bytes, config: PipelineConfig) -> str | None:
    """A precise reason, with its line, for text the fast parser refused."""
    return _invalid_utf8(text) or _structure_problem(text, config)


def _check_field_counts(text: bytes, frame: pl.DataFrame, config: PipelineConfig) -> None:
    """Short rows (and blank lines) are data errors too; polars would pad them with "".

    Without quoting in the file, the total number of delimiters proves every record complete
    (polars already refuses long ones), at the cost of one byte count. With quotes, a delimiter
    may sit inside a field, so the records are checked one by one."""
    width = frame.width
    quote = config.csv.quote_char
    start = 0  # where the body begins, after the skipped lines (offsets: the text is not copied)
    for _ in range(config.csv.skip_rows):
        start = text.find(b"\n", start) + 1 or len(text)
    if width <= 1:
        # One column: no delimiters to count, but a blank line is still not a record.
        blank = text.find(b"\n\n", start) >= 0 or text.find(b"\n\r\n", start) >= 0
        if blank or text.startswith((b"\n", b"\r\n"), start):
            problem = _structure_problem(text, config, 1)
            if problem:
                raise DataError(problem)
        return
    if quote is None or text.find(quote.encode(), start) < 0:
        records = frame.height + (1 if config.csv.has_header else 0)
        if text.count(config.delimiter.encode(), start) == records * (width - 1):
            return
    problem = _structure_problem(text, config, width)
    if problem:
        raise DataError(problem)


def _without_trailing_blank_lines(text: bytes) -> bytes:
    """Blank lines at the end of a file are not records (polars would read them as rows of "")."""
    end = len(text)
    while end and text[end - 1] in b"\r\n":
        end -= 1
    if text.count(b"\n", end) <= 1:
        return text  # at most the final newline: nothing to copy
    return text[:end] + b"\n"


def read_csv_bytes(data: bytes, config: PipelineConfig) -> pl.DataFrame:
    """Parse delimited text into an all-string frame, exactly as written (empty fields stay "");
    ``csv.null_values`` become NULL."""
    text = _without_trailing_blank_lines(to_utf8(decompress(data), config.csv.encoding))
    if not text or text.isspace():
        raise DataError("file is empty (no header row)")
    options = config.csv
    try:
        frame = pl.read_csv(
            io.BytesIO(text),
            separator=config.delimiter,
            quote_char=options.quote_char,
            has_header=options.has_header,
            skip_rows=options.skip_rows,
            infer_schema=False,
            empty_string_is_null=False,
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(_diagnose(text, config) or f"cannot parse the file: {first}") from None
    _check_field_counts(text, frame, config)
    if not options.has_header:
        frame.columns = [f"column_{i + 1}" for i in range(frame.width)]
    if options.null_values:
        nulls = pl.lit(pl.Series(options.null_values, dtype=pl.String)).implode()
        frame = frame.with_columns(
            pl.when(pl.col(c).is_in(nulls)).then(None).otherwise(pl.col(c)).alias(c) for c in frame.columns
        )
    return frame


def validate(
    frame: pl.DataFrame, columns: Sequence[ColumnSpec], strict: bool = False
) -> tuple[pl.DataFrame, list[RowProblem]]:
    """Cast the raw frame to the configured columns (empty values take their ``default``);
    return the typed frame and the bad values. ``strict``: extra file columns are an error."""
    missing = [c.source for c in columns if c.source not in frame.columns]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise DataError(f"missing column{'s' if len(missing) > 1 else ''} {names} (file has: {', '.join(frame.columns)})")
    if strict:
        extra = [name for name in frame.columns if name not in {c.source for c in columns}]
        if extra:
            raise DataError(f"unexpected column{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} (strict_columns is on)")
    defaults = [c for c in columns if c.default is not None]
    if defaults:
        frame = frame.with_columns(
            pl.when(_empty(pl.col(c.source))).then(pl.lit(c.default)).otherwise(pl.col(c.source)).alias(c.source)
            for c in defaults
        )
    typed = frame.select(
        datetime_series(frame[c.source]).alias(c.dest)
        if c.type == "datetime" and c.format is None
        else _convert(c, pl.col(c.source)).alias(c.dest)
        for c in columns
    )
    if not _may_have_problems(frame, typed, columns):
        return typed, []
    check_exprs = []
    for i, column in enumerate(columns):
        raw = frame[column.source]
        empty = _empty(pl.lit(raw))
        missing_required = empty if column.required else pl.lit(False)
        bad_value = (~empty & pl.lit(typed[column.dest]).is_null()) if column.type != "string" else pl.lit(False)
        problem = pl.when(missing_required).then(pl.lit(1)).when(bad_value).then(pl.lit(2)).otherwise(pl.lit(0))
        check_exprs.append(problem.cast(pl.Int8).alias(f"__check_{i}"))
    checks = pl.select(check_exprs)
    problems: list[RowProblem] = []
    flagged = checks.with_row_index("__row").filter(pl.any_horizontal(pl.all().exclude("__row") > 0))
    for row in flagged.head(MAX_REPORTED_ERRORS).iter_rows(named=True):
        index = row["__row"]
        for i, column in enumerate(columns):
            code = row[f"__check_{i}"]
            if not code:
                continue
            value = frame[column.source][index]
            reason = "required value is missing" if code == 1 else f"{value!r} is not a valid {column.type}"
            problems.append(RowProblem(index, column.source, value, reason))
    return typed, problems


def _may_have_problems(frame: pl.DataFrame, typed: pl.DataFrame, columns: Sequence[ColumnSpec]) -> bool:
    """Cheap column totals: a bad value shows as more nulls after the cast than empty inputs
    before it; a missing required value as any empty input. Only then are rows examined."""
    totals = frame.select(
        *(_empty(pl.col(c.source)).sum().alias(f"e{i}") for i, c in enumerate(columns)),
    ).row(0)
    for i, column in enumerate(columns):
        empties = totals[i]
        if column.required and empties:
            return True
        if column.type != "string" and typed[column.dest].null_count() > empties:
            return True
    return False


def _record_lines(text: bytes, rows: Sequence[int], config: PipelineConfig) -> dict[int, int]:
    """Physical line number (1-based) where each requested 0-based data row starts."""
    wanted = set(rows)
    found: dict[int, int] = {}
    reader, skip = _csv_rows(text, config)
    try:
        if config.csv.has_header:
            next(reader)
        start = skip + reader.line_num + 1
        for index, _ in enumerate(reader):
            if index in wanted:
                found[index] = start
                if len(found) == len(wanted):
                    break
            start = skip + reader.line_num + 1
    except (csv.Error, StopIteration):
        pass
    return found


def _problem_lines(data: bytes, rows: Sequence[int], config: PipelineConfig) -> dict[int, int]:
    """Where the bad rows start in the file, for the formats that have lines."""
    if config.format == "parquet":
        return {}
    text = to_utf8(decompress(data), config.csv.encoding)
    if config.format == "jsonl":
        return _jsonl_lines(text, rows)
    return _record_lines(text, rows, config)


def describe_problems(data: bytes, problems: Sequence[RowProblem], config: PipelineConfig) -> str:
    """``row 2 (line 3), column 'amount': 'abc' is not a valid float`` (+ how many more)."""
    lines = _problem_lines(data, [p.row for p in problems], config)
    parts = []
    for p in problems:
        line = f" (line {lines[p.row]})" if p.row in lines else ""
        parts.append(f"row {p.row + 1}{line}, column {p.column!r}: {p.reason}")
    text = "; ".join(parts[:5])
    if len(problems) > 5:
        text += f"; and more ({len(problems)} shown of at most {MAX_REPORTED_ERRORS})"
    return text


def _jsonl_lines(text: bytes, rows: Sequence[int]) -> dict[int, int]:
    """Line of each 0-based record of a JSON-lines text (blank lines are not records)."""
    wanted, found, index = set(rows), {}, 0
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        if index in wanted:
            found[index] = number
        index += 1
    return found


def read_jsonl_bytes(data: bytes, config: PipelineConfig) -> pl.DataFrame:
    """JSON lines, one object per line; each configured key read as its JSON text, numbers
    exactly as written (``1.10`` stays ``1.10``: a decimal is never rounded through a double)."""
    import json

    text = to_utf8(decompress(data), config.csv.encoding)
    if not text.strip():
        raise DataError("file is empty (no JSON records)")
    invalid = _invalid_utf8(text)
    if invalid:
        raise DataError(invalid)
    keys = [column.source for column in config.columns]
    values: dict[str, list[str | None]] = {key: [] for key in keys}
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_float=str, parse_int=str, parse_constant=str)
        except ValueError as exc:
            raise DataError(f"line {number}: invalid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise DataError(f"line {number}: expected a JSON object, found {type(record).__name__}")
        for key in keys:
            value = record.get(key)
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (dict, list)):
                raise DataError(f"line {number}: key {key!r} holds a nested value; only scalars can be loaded")
            values[key].append(value)
    return pl.DataFrame(values, schema={key: pl.String for key in keys})


def read_parquet_bytes(data: bytes, config: PipelineConfig) -> pl.DataFrame:
    """A Parquet file's configured columns as text, so every format is validated alike."""
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a readable Parquet file: {first}") from None
    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime) and dtype.time_zone:
            exprs.append(pl.col(name).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00"))
        elif dtype.is_nested():
            exprs.append(pl.col(name))  # reported below if it is a configured column
        else:
            exprs.append(pl.col(name).cast(pl.String))
    nested = [c.source for c in config.columns if c.source in frame.columns and frame.schema[c.source].is_nested()]
    if nested:
        raise DataError(f"column {nested[0]!r} holds nested values ({frame.schema[nested[0]]}); only scalars can be loaded")
    return frame.select(exprs)


_FORMAT_READERS = {"csv": read_csv_bytes, "tsv": read_csv_bytes, "jsonl": read_jsonl_bytes, "parquet": read_parquet_bytes}


def read_file(data: bytes, config: PipelineConfig) -> pl.DataFrame:
    """The file's rows, typed and validated as ``config`` says; ``DataError`` on any bad value."""
    frame = _FORMAT_READERS[config.format](data, config)
    typed, problems = validate(frame, config.columns, config.strict_columns)
    if problems:
        raise DataError(describe_problems(data, problems, config))
    return typed
