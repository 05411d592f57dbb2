"""CSV reading and typing: csv-spectrum loads exactly; bad values name row, line, column, value."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from filedge_core.audit import AuditStore
from filedge_core.batches import read_file
from filedge_core.config import parse_pipeline
from filedge_core.errors import DataError
from filedge_core.runner import run_pipeline
from tests.support import CSV_SPECTRUM

CASES = sorted(p.stem for p in (CSV_SPECTRUM / "csvs").glob("*.csv"))


def config_for(columns, url="sqlite:///dest.db", base=Path("/tmp"), **more):
    return parse_pipeline(
        {"dest_table": "t", "connector": {"type": "sqlite", "url": url}, "columns": columns, **more}, "p.yaml", base
    )


def test_spectrum_has_all_cases() -> None:
    assert len(CASES) == 11


@pytest.mark.parametrize("batch_bytes", [None, 1, 7])
@pytest.mark.parametrize("case", CASES)
def test_csv_spectrum_loads_exactly(case: str, batch_bytes: int | None, tmp_path: Path) -> None:
    """Each case goes through the whole pipeline into SQLite and reads back as its JSON, read
    whole and in batches as small as one record (chunk cuts inside quoted newlines too)."""
    expected = json.loads((CSV_SPECTRUM / "json" / f"{case}.json").read_text(encoding="utf-8"))
    names = list(expected[0])
    more = {"batch_bytes": batch_bytes} if batch_bytes else {}
    config = config_for([{"source": n, "type": "string"} for n in names], base=tmp_path, **more)
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / f"{case}.csv").write_bytes((CSV_SPECTRUM / "csvs" / f"{case}.csv").read_bytes())
    audit = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    summary = run_pipeline(config, incoming, audit)
    assert summary.line() == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"
    with sqlite3.connect(tmp_path / "dest.db") as conn:
        got = [dict(zip(names, row)) for row in conn.execute(f"SELECT {', '.join(names)} FROM t ORDER BY rowid")]
    assert got == expected


def test_types_cast() -> None:
    config = config_for([
        {"source": "i", "type": "int"}, {"source": "f", "type": "float"}, {"source": "b", "type": "bool"},
        {"source": "d", "type": "date"}, {"source": "t", "type": "datetime"}, {"source": "s", "type": "string"},
    ])
    data = (
        "i,f,b,d,t,s\n"
        " 7 ,2.5,YES,2024-02-29,2024-01-02T03:04:05+02:00,x\n"
        "-3,1e3,false,,2024-01-02 03:04:05,\n"
        ",,No,2024-01-01,2024-01-02T03:04:05.250Z, y \n"
        "0,0,1,2024-01-01,2024-01-02,z\n"
    ).encode()
    rows = read_file(data, config).rows()
    utc = timezone.utc
    assert rows == [
        (7, 2.5, True, date(2024, 2, 29), datetime(2024, 1, 2, 1, 4, 5, tzinfo=utc), "x"),
        (-3, 1000.0, False, None, datetime(2024, 1, 2, 3, 4, 5, tzinfo=utc), ""),
        (None, None, False, date(2024, 1, 1), datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=utc), " y "),
        (0, 0.0, True, date(2024, 1, 1), datetime(2024, 1, 2, tzinfo=utc), "z"),
    ]


@pytest.mark.parametrize(
    "column, value, reason",
    [
        ("int", "1.5", "'1.5' is not a valid int"),
        ("int", "12x", "'12x' is not a valid int"),
        ("float", "abc", "'abc' is not a valid float"),
        ("bool", "maybe", "'maybe' is not a valid bool"),
        ("date", "2024-02-30", "'2024-02-30' is not a valid date"),
        ("datetime", "yesterday", "'yesterday' is not a valid datetime"),
    ],
)
def test_bad_value_names_row_line_column_value(column: str, value: str, reason: str) -> None:
    config = config_for([{"source": "id", "type": "string"}, {"source": "v", "type": column}])
    data = f'id,v\n"multi\nline",\nb,{value}\n'.encode()
    with pytest.raises(DataError) as info:
        read_file(data, config)
    assert str(info.value) == f"row 2 (line 4), column 'v': {reason}"


def test_required_means_not_empty() -> None:
    config = config_for([{"source": "id", "type": "string", "required": True}, {"source": "n", "type": "int", "required": True}])
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'id': required value is missing"):
        read_file(b"id,n\n ,1\n", config)
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'n': required value is missing"):
        read_file(b"id,n\na,1\nb,\n", config)


def test_not_required_empty_is_null_for_typed_columns() -> None:
    config = config_for([{"source": "n", "type": "int"}, {"source": "s"}])
    assert read_file(b"n,s\n,a\n  ,b\n1,c\n", config)["n"].to_list() == [None, None, 1]


def test_missing_column_is_a_data_error() -> None:
    config = config_for([{"source": "order_id"}, {"source": "amount", "type": "float"}])
    with pytest.raises(DataError, match=r"missing column 'amount' \(file has: order_id, total\)"):
        read_file(b"order_id,total\n1,2\n", config)


@pytest.mark.parametrize("data", [b"", b"\n\n", b'a\n"unterminated\n'])
def test_unparseable_files_are_data_errors(data: bytes) -> None:
    config = config_for([{"source": "a"}])
    with pytest.raises(DataError):
        read_file(data, config)


def test_header_only_is_zero_rows() -> None:
    assert read_file(b"a\n", config_for([{"source": "a"}])).height == 0


def test_many_errors_are_summarized() -> None:
    config = config_for([{"source": "n", "type": "int"}])
    data = ("n\n" + "x\n" * 50).encode()
    with pytest.raises(DataError) as info:
        read_file(data, config)
    assert str(info.value).startswith("row 1 (line 2), column 'n': 'x' is not a valid int; row 2 (line 3)")
    assert str(info.value).count("is not a valid int") == 20
    assert "row 21 " not in str(info.value)
    assert str(info.value).endswith("(stopped at the first 20 errors)")
