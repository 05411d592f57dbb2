"""Delimited text as received: tsv, csv options, encodings, compression, and broken files as
data errors that name the line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import zstandard

from filedge_core.batches import read_file
from filedge_core.config import parse_pipeline
from filedge_core.errors import DataError
from filedge_core.runner import run_pipeline
from tests.support import Workspace


def config(columns=None, **changes):
    data = {
        "dest_table": "t",
        "connector": {"type": "sqlite", "url": "sqlite:///d.db"},
        "columns": columns or [{"source": "id", "required": True}, {"source": "amount", "type": "float"}],
        **changes,
    }
    return parse_pipeline(data, "p.yaml", Path("/tmp"))


def rows(data: bytes, **changes) -> list[tuple]:
    return read_file(data, config(**changes)).rows()


def error(data: bytes, **changes) -> str:
    with pytest.raises(DataError) as info:
        read_file(data, config(**changes))
    return str(info.value)


def test_tsv() -> None:
    assert rows(b"id\tamount\na,b\t1.5\n", format="tsv") == [("a,b", 1.5)]


def test_delimiter_and_quote_char() -> None:
    data = b"id;amount\n'x;y';2\n"
    assert rows(data, csv={"delimiter": ";", "quote_char": "'"}) == [("x;y", 2.0)]


def test_no_header_names_columns_by_position() -> None:
    columns = [{"source": "column_1", "dest": "id"}, {"source": "column_2", "dest": "amount", "type": "float"}]
    assert rows(b"a,1\nb,2\n", columns=columns, csv={"has_header": False}) == [("a", 1.0), ("b", 2.0)]


def test_skip_rows_and_line_numbers() -> None:
    data = b"report of 2026-12-01\n\nid,amount\nx,1\ny,oops\n"
    assert rows(data[: data.index(b"y,")], csv={"skip_rows": 2}) == [("x", 1.0)]
    assert error(data, csv={"skip_rows": 2}) == "row 2 (line 5), column 'amount': 'oops' is not a valid float"


def test_null_values() -> None:
    data = b"id,amount\nx,NA\n-,1\n"
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'id': required value is missing"):
        read_file(data, config(csv={"null_values": ["NA", "-"]}))
    optional = [{"source": "id"}, {"source": "amount", "type": "float"}]
    assert rows(data, columns=optional, csv={"null_values": ["NA", "-"]}) == [("x", None), (None, 1.0)]


def test_encodings() -> None:
    assert rows("id,amount\ncafé,1\n".encode("latin-1"), csv={"encoding": "latin1"}) == [("café", 1.0)]
    with_bom = b"\xef\xbb\xbfid,amount\nx,1\n"
    assert rows(with_bom, csv={"encoding": "utf8-sig"}) == [("x", 1.0)]
    assert "set csv.encoding: utf8-sig" in error(with_bom)


def test_invalid_utf8_names_the_line() -> None:
    assert error(b"id,amount\nx,1\ny\xff,2\n") == (
        "line 3: invalid UTF-8 (byte 0xff); set csv.encoding if the file is not UTF-8"
    )


def test_binary_file() -> None:
    assert error(b"id,amount\nx\x00\x01,1\n") == "line 2: NUL byte: this is a binary file, not text"


def test_ragged_and_bad_quoting_name_the_line() -> None:
    assert error(b"id,amount\nx,1\ny,2,3\n") == "line 3: 3 fields, but the header has 2"
    assert error(b'id,amount\nx,1\ny,"2"z\n').startswith("line 3: bad quoting:")


@pytest.mark.parametrize("compress", [gzip.compress, lambda b: zstandard.ZstdCompressor().compress(b)], ids=["gzip", "zstd"])
def test_compressed_files_load_through_the_pipeline(ws: Workspace, compress) -> None:
    ws.add("a.csv.gz", compress(b"order_id,amount\n1,2.5\n2,3.5\n"))
    summary = run_pipeline(ws.config(), ws.incoming, ws.audit())
    assert summary.committed == 1
    assert [r[:2] for r in ws.dest_rows()] == [("1", 2.5), ("2", 3.5)]


def test_corrupt_compressed_data() -> None:
    assert error(gzip.compress(b"id,amount\nx,1\n")[:-8] + b"garbage!").startswith("corrupt gzip data")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"id,amount\nx,1\ny\nz,3\n", "line 3: 1 field, but the header has 2"),
        (b"id,amount\nx,1\n\nz,3\n", "line 3: a blank line, but the header has 2"),
        (b'id,amount\n"x,1",1\ny\n', "line 3: 1 field, but the header has 2"),  # quoted: the slow path
        (b"pre\nid,amount\nx,1\ny\n", "line 4: 1 field, but the header has 2"),
    ],
    ids=["short", "blank", "short-quoted", "short-after-skip"],
)
def test_short_rows_and_blank_lines_name_the_line(data: bytes, message: str) -> None:
    skip = 1 if data.startswith(b"pre") else 0
    assert error(data, csv={"skip_rows": skip}) == message


def test_trailing_newlines_and_single_columns_are_fine() -> None:
    assert rows(b"id,amount\nx,1\n\n") == [("x", 1.0)]
    assert read_file(b"id\nx\ny\n\n", config(columns=[{"source": "id"}])).rows() == [("x",), ("y",)]


def test_jsonl_keeps_json_text_and_names_lines() -> None:
    data = b'{"id": "a", "amount": 1}\n\n{"id": "b", "amount": 2.5, "extra": {"x": 1}}\n'
    assert rows(data, format="jsonl") == [("a", 1.0), ("b", 2.5)]
    assert error(b'{"id": "a", "amount": 1}\n{"id": "b", "amount": "x"}\n', format="jsonl") == (
        "row 2 (line 2), column 'amount': 'x' is not a valid float"
    )
    assert error(b'{"id": "a", "amount": 1}\n{"id": \n', format="jsonl").startswith("line 2: invalid JSON")
    ints = [{"source": "id"}, {"source": "amount", "type": "int"}]
    assert read_file(b'{"id": "a", "amount": 10000000000}\n', config(columns=ints, format="jsonl")).rows() == [
        ("a", 10_000_000_000)
    ]


def test_parquet_round_trips_types() -> None:
    import datetime as dt
    import io

    import polars as pl

    frame = pl.DataFrame({
        "id": ["a", "b"],
        "amount": [1.5, None],
        "when": [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))] * 2,
        "day": [dt.date(2024, 1, 2)] * 2,
    })
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    columns = [{"source": "id"}, {"source": "amount", "type": "float"},
               {"source": "when", "type": "datetime"}, {"source": "day", "type": "date"}]
    got = read_file(buffer.getvalue(), config(columns=columns, format="parquet")).rows()
    utc = dt.timezone.utc
    assert got == [("a", 1.5, dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=utc), dt.date(2024, 1, 2)),
                   ("b", None, dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=utc), dt.date(2024, 1, 2))]
    assert error(b"PAR1 not really", format="parquet").startswith("not a readable Parquet file")


def test_defaults_fill_empty_values() -> None:
    columns = [{"source": "id", "required": True, "default": "unknown"},
               {"source": "amount", "type": "float", "default": 0},
               {"source": "paid", "type": "bool", "default": False}]
    data = b"id,amount,paid\n,,\nx,2,yes\n"
    assert read_file(data, config(columns=columns)).rows() == [("unknown", 0.0, False), ("x", 2.0, True)]


def test_date_and_datetime_formats() -> None:
    import datetime as dt

    columns = [{"source": "id"}, {"source": "day", "type": "date", "format": "%d/%m/%Y"},
               {"source": "at", "type": "datetime", "format": "%d/%m/%Y %H.%M"}]
    got = read_file(b"id,day,at\nx,31/12/2024,31/12/2024 23.59\n", config(columns=columns)).rows()
    assert got == [("x", dt.date(2024, 12, 31), dt.datetime(2024, 12, 31, 23, 59, tzinfo=dt.timezone.utc))]
    assert error(b"id,day,at\nx,2024-12-31,\n", columns=columns) == (
        "row 1 (line 2), column 'day': '2024-12-31' is not a valid date"
    )


def test_strict_columns() -> None:
    data = b"id,amount,note\nx,1,hello\n"
    assert rows(data) == [("x", 1.0)]
    assert error(data, strict_columns=True) == "unexpected column 'note' (strict_columns is on)"


@pytest.mark.parametrize(
    "column, message",
    [
        ({"source": "a", "type": "int", "default": "x"}, "default 'x' is not a valid int"),
        ({"source": "a", "type": "int", "format": "%d"}, "format applies to date and datetime columns, not int"),
        ({"source": "a", "type": "date", "default": "2024-13-01"}, "default '2024-13-01' is not a valid date"),
    ],
)
def test_default_and_format_are_checked_with_the_config(column, message) -> None:
    from filedge_core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"columns\\[0\\]: {message}"):
        config(columns=[column])


def test_decimal_is_exact_and_never_rounded(ws: Workspace) -> None:
    from decimal import Decimal

    columns = [{"source": "id"}, {"source": "amount", "type": "decimal", "precision": 8, "scale": 2}]
    assert read_file(b"id,amount\nx,12.3\ny,-0.05\nz,7\n", config(columns=columns)).rows() == [
        ("x", Decimal("12.30")), ("y", Decimal("-0.05")), ("z", Decimal("7.00"))]
    assert error(b"id,amount\nx,1.234\n", columns=columns) == "row 1 (line 2), column 'amount': '1.234' is not a valid decimal"
    assert error(b"id,amount\nx,1234567.5\n", columns=columns).endswith("'1234567.5' is not a valid decimal")
    # Stored exactly in SQLite (as text; a numeric affinity would make 12.30 the REAL 12.3).
    ws.configure(columns=[{"source": "order_id"}, {"source": "amount", "type": "decimal", "precision": 12, "scale": 2}])
    ws.add("a.csv", "order_id,amount\n1,12.3\n2,0.10\n")
    assert run_pipeline(ws.config(), ws.incoming, ws.audit()).committed == 1
    assert [r[:2] for r in ws.dest_rows()] == [("1", "12.30"), ("2", "0.10")]


@pytest.mark.parametrize(
    "column, message",
    [
        ({"source": "a", "type": "decimal"}, "a decimal column needs precision and scale"),
        ({"source": "a", "type": "decimal", "precision": 2, "scale": 3}, "scale 3 is larger than precision 2"),
        ({"source": "a", "type": "int", "scale": 3}, "precision and scale apply to decimal columns, not int"),
        ({"source": "a", "type": "decimal", "precision": 5, "scale": 2, "default": "x"}, "default 'x' is not a valid decimal"),
    ],
)
def test_decimal_config_errors(column, message) -> None:
    from filedge_core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"columns\\[0\\]: {message}"):
        config(columns=[column])


def test_zstd_reads_every_frame_and_refuses_truncation() -> None:
    compressor = zstandard.ZstdCompressor()
    two_frames = compressor.compress(b"id,amount\nx,1\n") + compressor.compress(b"y,2\n")
    assert rows(two_frames) == [("x", 1.0), ("y", 2.0)]
    whole = compressor.compress(b"id,amount\n" + b"".join(b"r%d,%d.25\n" % (i, i) for i in range(50_000)))
    assert error(whole[: len(whole) // 2]).startswith("truncated zstd data")


def test_nan_and_infinity_are_not_valid_floats() -> None:
    assert error(b"id,amount\nx,NaN\n") == "row 1 (line 2), column 'amount': 'NaN' is not a valid float"
    assert error(b"id,amount\nx,-inf\n") == "row 1 (line 2), column 'amount': '-inf' is not a valid float"


def test_blank_line_in_a_single_column_file() -> None:
    single = [{"source": "id"}]
    with pytest.raises(DataError, match="line 3: a blank line, but the header has 1"):
        read_file(b"id\na\n\nb\n", config(columns=single))


def test_jsonl_numbers_are_read_exactly() -> None:
    from decimal import Decimal

    columns = [{"source": "id"}, {"source": "amount", "type": "decimal", "precision": 38, "scale": 2},
               {"source": "n", "type": "int"}, {"source": "ok", "type": "bool"}]
    data = b'{"id": "a", "amount": 123456789012345678.91, "n": 9007199254740993, "ok": true}\n'
    assert read_file(data, config(columns=columns, format="jsonl")).rows() == [
        ("a", Decimal("123456789012345678.91"), 9007199254740993, True)]
    assert error(b'{"id": "a", "amount": 1}\n[1]\n', format="jsonl") == "line 2: expected a JSON object, found list"
    assert error(b'{"id": {"x": 1}, "amount": 1}\n', format="jsonl") == (
        "line 1: key 'id' holds a nested value; only scalars can be loaded")
