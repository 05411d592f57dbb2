"""Casting raw text columns to the configured types, and finding the values that do not fit.

Casting and validation run as polars expressions, never per row in Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .config import ColumnSpec
from .errors import DataError

MISSING, INVALID = 1, 2  # problem codes: a required value is empty; a value is not of its type

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")


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


@dataclass(frozen=True)
class Validated:
    """A raw frame cast to the configured columns.

    ``typed``: one row per input row (NULL where a value is bad). ``bad``: which rows have a
    problem (None when none has). ``problems``: one row per bad value, in row order, with
    ``row`` (0-based, in the input frame), ``column`` (source name), ``value`` (raw) and
    ``code`` (``MISSING`` or ``INVALID``); at most ``limit`` rows' worth when a limit is given."""

    typed: pl.DataFrame
    bad: pl.Series | None
    problems: pl.DataFrame


PROBLEM_SCHEMA = {"row": pl.UInt32, "column": pl.String, "value": pl.String, "code": pl.Int8}


def check_columns(names: Sequence[str], columns: Sequence[ColumnSpec], strict: bool) -> None:
    """A configured column missing from the file is an error; with ``strict``, so is an extra one."""
    missing = [c.source for c in columns if c.source not in names]
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        raise DataError(f"missing column{'s' if len(missing) > 1 else ''} {listed} (file has: {', '.join(names)})")
    if strict:
        extra = [name for name in names if name not in {c.source for c in columns}]
        if extra:
            raise DataError(
                f"unexpected column{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} (strict_columns is on)"
            )


def validate(
    frame: pl.DataFrame, columns: Sequence[ColumnSpec], limit: int | None = None
) -> Validated:
    """Cast the raw frame to the configured columns (empty values take their ``default``) and
    find the bad values: a required value missing, or a value that is not of its type."""
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
        return Validated(typed, None, pl.DataFrame(schema=PROBLEM_SCHEMA))
    codes = []
    for column in columns:
        empty = _empty(frame[column.source])
        missing_required = empty if column.required else pl.repeat(False, frame.height, eager=True)
        if column.type == "string":
            bad_value = pl.repeat(False, frame.height, eager=True)
        else:
            bad_value = ~empty & typed[column.dest].is_null()
        codes.append(
            pl.select(pl.when(missing_required).then(MISSING).when(bad_value).then(INVALID).otherwise(0))
            .to_series()
            .cast(pl.Int8)
        )
    bad = pl.select(pl.any_horizontal(*(code > 0 for code in codes))).to_series()
    rows = bad.arg_true()
    if limit is not None:
        rows = rows.head(limit)
    parts = []
    for column, code in zip(columns, codes):
        picked = code.gather(rows)
        keep = picked > 0
        parts.append(
            pl.DataFrame(
                {
                    "row": rows.filter(keep),
                    "column": pl.repeat(column.source, int(keep.sum()), eager=True, dtype=pl.String),
                    "value": frame[column.source].gather(rows).filter(keep),
                    "code": picked.filter(keep),
                }
            )
        )
    order = {column.source: i for i, column in enumerate(columns)}
    problems = (
        pl.concat(parts)
        .with_columns(pl.col("column").replace_strict(order, return_dtype=pl.Int32).alias("__order"))
        .sort("row", "__order")
        .drop("__order")
        .cast(PROBLEM_SCHEMA)  # type: ignore[arg-type]
    )
    return Validated(typed, bad, problems)


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


def reason(column: ColumnSpec, code: int, value: str | None, quoted: bool = True) -> str:
    """Why a value was refused: with the value (for messages) or without (beside it in a table)."""
    if code == MISSING:
        return "required value is missing"
    return f"{value!r} is not a valid {column.type}" if quoted else f"not a valid {column.type}"
