"""Casting raw text columns to the configured types, and finding the values that do not fit.

Casting and validation run as polars expressions, never per row in Python."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from .config import ColumnSpec
from .errors import DataError

MISSING, INVALID = 1, 2  # problem codes: a required value is empty; a value is not of its type

_TRUE_WORDS = ["true", "1", "yes"]
_FALSE_WORDS = ["false", "0", "no"]
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


_FAST_PATTERNS = {
    fmt: re.compile(pattern)
    for fmt, pattern in (
        ("%Y-%m-%dT%H:%M:%SZ", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
        ("%Y-%m-%dT%H:%M:%S%.fZ", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"),
        ("%Y-%m-%dT%H:%M:%S%:z", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"),
        ("%Y-%m-%dT%H:%M:%S%.f%:z", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d"),
        ("%Y-%m-%d %H:%M:%S", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"),
        ("%Y-%m-%d %H:%M:%S%.f", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+"),
        ("%Y-%m-%dT%H:%M:%S", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"),
        ("%Y-%m-%d %H:%M:%S%:z", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"),
    )
}


def _first_value(raw: pl.Series) -> str | None:
    """The column's first non-empty value (stripped), or None."""
    for value in raw.head(64).to_list():
        if value is not None and value.strip():
            return value.strip()
    rest = raw.filter(raw.str.strip_chars() != "").head(1)
    return rest[0].strip() if rest.len() else None


def datetime_expr(raw: pl.Series) -> tuple[pl.Expr, bool]:
    """The cast of a datetime column without ``format``: with the one fast format its first
    value is written in when there is one (``True``; values it does not read must then be
    re-read by ``reparse_datetimes``), else every accepted form in turn (``False``)."""
    stripped = pl.col(raw.name).str.strip_chars()
    sample = _first_value(raw)
    if sample is not None:
        for fmt, aware in _FAST_DATETIME_FORMATS:
            if _FAST_PATTERNS[fmt].fullmatch(sample):
                return _fast_datetime(stripped, fmt, aware), True
    return _parse_datetime(stripped), False


def reparse_datetimes(raw: pl.Series, fast: pl.Series) -> pl.Series:
    """``fast`` with the values its single format left NULL read by the general parser."""
    left = (fast.is_null() & raw.is_not_null() & (raw.str.strip_chars() != "")).arg_true()
    if not left.len():
        return fast
    slow = raw.gather(left).to_frame("v").select(_parse_datetime(pl.col("v").str.strip_chars())).to_series()
    return fast.scatter(left, slow)


def datetime_series(raw: pl.Series) -> pl.Series:
    """A string column as UTC datetimes (null where unreadable)."""
    expr, fast = datetime_expr(raw)
    parsed = raw.to_frame().select(expr.alias(raw.name)).to_series()
    return reparse_datetimes(raw, parsed) if fast else parsed


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
        lower = stripped.str.to_lowercase()
        return pl.when(lower.is_in(_TRUE_WORDS)).then(True).when(lower.is_in(_FALSE_WORDS)).then(False)
    if column.type == "decimal":
        assert column.precision is not None and column.scale is not None
        # Plain digits only (an exponent would let polars round 1.5e-5 to 0.00), and polars
        # would cut extra fraction digits off silently: such values are rejected instead.
        plain = stripped.str.contains(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
        digits = stripped.str.extract(r"\.(\d+)", 1).str.len_chars()
        value = stripped.cast(pl.Decimal(column.precision, column.scale), strict=False)
        return pl.when(~plain | (digits > column.scale)).then(None).otherwise(value)
    if column.type == "date":
        return stripped.str.to_date(column.format or "%Y-%m-%d", strict=False)
    if column.type == "datetime":
        if column.format is None:
            return _parse_datetime(stripped)
        if "%z" in column.format or "%:z" in column.format:
            return stripped.str.to_datetime(column.format, strict=False, time_zone="UTC", time_unit="us")
        return stripped.str.to_datetime(column.format, strict=False, time_unit="us").dt.replace_time_zone("UTC")
    raise AssertionError(column.type)  # config validation makes this unreachable


@functools.lru_cache(maxsize=1024)
def _cast_expr(column: ColumnSpec) -> pl.Expr:
    """``_convert`` of the column's source, built once per column (building costs more than
    evaluating it on a small file)."""
    return _convert(column, pl.col(column.source))


@functools.lru_cache(maxsize=1024)
def _empty_column(name: str) -> pl.Expr:
    return _empty(pl.col(name))


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
        found = ", ".join(name if name.isprintable() else repr(name) for name in names)
        raise DataError(f"missing column{'s' if len(missing) > 1 else ''} {listed} (file has: {found})")
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
    find the bad values: a required value missing, or a value that is not of its type.

    Two polars calls when every value is good (the cast; one check of all columns): polars'
    fixed cost per call, not the values, is what small files pay for."""
    defaults = [c for c in columns if c.default is not None]
    if defaults:
        frame = frame.with_columns(
            pl.when(_empty(pl.col(c.source))).then(pl.lit(c.default)).otherwise(pl.col(c.source)).alias(c.source)
            for c in defaults
        )
    exprs, fast_datetimes = [], []
    for i, c in enumerate(columns):
        if c.type == "datetime" and c.format is None:
            expr, fast = datetime_expr(frame[c.source])
            if fast:
                fast_datetimes.append(i)
        else:
            expr = _cast_expr(c)
        exprs.append(expr.alias(f"__typed{i}"))
    combined = frame.with_columns(exprs)
    flags = _problem_flags(combined, columns)
    for i in fast_datetimes:
        if flags[i]:  # values the column's first format did not read: try every form
            c = columns[i]
            fixed = reparse_datetimes(frame[c.source], combined[f"__typed{i}"])
            combined = combined.with_columns(fixed.alias(f"__typed{i}"))
            flags = _problem_flags(combined, columns)
    typed = combined.select(pl.col(f"__typed{i}").alias(c.dest) for i, c in enumerate(columns))
    if not any(flags):
        return Validated(typed, None, pl.DataFrame(schema=PROBLEM_SCHEMA))
    return Validated(typed, *_problems(frame, typed, columns, limit))


def _problem_flags(combined: pl.DataFrame, columns: Sequence[ColumnSpec]) -> list[bool]:
    """Per column, whether any value is bad: a NULL after the cast where the input was not
    empty, or an empty required value.

    An empty value casts to NULL in every typed column, so a typed column without NULLs (a
    count polars keeps) is fine without looking at its values; the rest take one polars call."""
    flags = [False] * len(columns)
    checks = {}
    for i, column in enumerate(columns):
        empty = _empty_column(column.source)
        if column.type == "string":
            if column.required:
                checks[i] = empty.any()
        elif combined[f"__typed{i}"].null_count():
            check = (~empty & pl.col(f"__typed{i}").is_null()).any()
            checks[i] = check | empty.any() if column.required else check
    if checks:
        found = combined.select(check.alias(f"__flag{i}") for i, check in checks.items()).row(0)
        for i, flag in zip(checks, found):
            flags[i] = bool(flag)
    return flags


def _problems(
    frame: pl.DataFrame, typed: pl.DataFrame, columns: Sequence[ColumnSpec], limit: int | None
) -> tuple[pl.Series, pl.DataFrame]:
    """Which rows are bad, and one row per bad value (at most ``limit`` rows' worth)."""
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
    return bad, problems


def reason(column: ColumnSpec, code: int, value: str | None, quoted: bool = True) -> str:
    """Why a value was refused: with the value (for messages) or without (beside it in a table)."""
    if code == MISSING:
        return "required value is missing"
    return f"{value!r} is not a valid {column.type}" if quoted else f"not a valid {column.type}"
