"""The bad-row policy and batching: on_error, max_rejected, batch boundaries, changed files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from filedge_core.batches import FileBatches, read_file
from filedge_core.config import parse_pipeline
from filedge_core.errors import ConfigError, DataError, FileChanged
from filedge_core.scan import hash_bytes
from filedge_core.source import Snapshot, record_boundary, snapshot_of

COLUMNS = [{"source": "id", "type": "int", "required": True}, {"source": "amount", "type": "float"}]


def config(**more):
    return parse_pipeline(
        {"dest_table": "t", "connector": {"type": "sqlite", "url": "sqlite:///x.db"}, "columns": COLUMNS, **more},
        "p.yaml",
        Path("/tmp"),
    )


def orders(n: int, bad_every: int = 0) -> bytes:
    lines = ["id,amount"]
    for i in range(1, n + 1):
        lines.append(f"{i},{'x' if bad_every and i % bad_every == 0 else i}.5")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("batch_bytes", [1, 100, 1 << 20])
def test_batches_cover_every_row_once(batch_bytes: int) -> None:
    batches = FileBatches(snapshot_of(orders(1000)), config(), batch_bytes)
    frames = [b.frame for b in batches]
    assert (len(frames) > 10) == (batch_bytes < 1000)
    ids = [row[0] for frame in frames for row in frame.rows()]
    assert ids == list(range(1, 1001))
    assert batches.records == 1000 and batches.rows_written == 1000


def test_fail_lists_the_first_twenty_errors_across_batches() -> None:
    with pytest.raises(DataError) as info:
        list(FileBatches(snapshot_of(orders(1000, bad_every=7)), config(), 64))
    message = str(info.value)
    assert message.count("is not a valid float") == 20
    assert message.startswith("row 7 (line 8), column 'amount': 'x.5' is not a valid float; row 14 (line 15)")
    assert "row 140 (line 141)" in message and "row 147 " not in message


def test_quarantine_counts_and_max_rejected_count() -> None:
    batches = FileBatches(snapshot_of(orders(100, bad_every=10)), config(on_error="quarantine"), 50)
    rejects = [row for b in batches for row in b.rejects.rows()]
    assert batches.rows_rejected == 10 and batches.rows_written == 90
    assert rejects[0] == (10, 11, "amount", "x.5", "not a valid float")
    with pytest.raises(DataError, match=r"^10 rows rejected so far, more than max_rejected \(9\); first: row 10 \(line 11\)"):
        list(FileBatches(snapshot_of(orders(100, bad_every=10)), config(on_error="quarantine", max_rejected=9), 50))
    assert len(list(FileBatches(snapshot_of(orders(100, bad_every=10)), config(on_error="quarantine", max_rejected=10))))


def test_max_rejected_percent_is_checked_at_the_end() -> None:
    ok = config(on_error="quarantine", max_rejected="10%")
    assert sum(b.frame.height for b in FileBatches(snapshot_of(orders(100, bad_every=10)), ok)) == 90
    with pytest.raises(DataError, match=r"^11 of 100 rows rejected \(11\.0%\), more than max_rejected \(10%\)"):
        list(FileBatches(snapshot_of(orders(100, bad_every=9)), ok))


def test_a_file_changed_under_the_reader_is_released_not_failed() -> None:
    good, bad = orders(10), orders(10, bad_every=3)
    # The claimed bytes were the good ones; what is read now has bad values: FileChanged wins.
    with pytest.raises(FileChanged, match="file changed while being read"):
        list(FileBatches(Snapshot(io.BytesIO(bad), "f.csv", hash_bytes(good)), config()))
    with pytest.raises(FileChanged):
        list(FileBatches(Snapshot(io.BytesIO(good + b"11,11.5\n"), "f.csv", hash_bytes(good)), config(), 16))
    assert len(read_file(good, config())) == 10


def test_the_hash_is_checked_before_the_last_batch_is_handed_over() -> None:
    data = orders(50)
    seen = []
    batches = FileBatches(Snapshot(io.BytesIO(data), "f.csv", "0" * 64), config(), 1 << 20)
    with pytest.raises(FileChanged):
        for batch in batches:
            seen.append(batch)
    assert seen == []  # a one-batch file is proven changed before anything is written


@pytest.mark.parametrize(
    ("text", "quote", "cut"),
    [
        (b'a,b\n1,"x\ny"\n2,', b'"', 12),
        (b'a,b\n1,"x\ny', b'"', 4),
        (b'1,"x""\n', b'"', -1),
        (b"1,2\n3", None, 4),
        (b'1,"\n', b'"', -1),
    ],
)
def test_record_boundary_respects_quotes(text: bytes, quote: bytes | None, cut: int) -> None:
    assert record_boundary(text, quote) == cut


@pytest.mark.parametrize(
    ("more", "message"),
    [
        ({"write_mode": "upsert"}, "write_mode upsert needs key"),
        ({"write_mode": "upsert", "key": ["nope"]}, "key column 'nope' is not one of the configured columns"),
        ({"key": ["id"]}, "key applies to write_mode: upsert, not append"),
        ({"max_rejected": 5}, "max_rejected applies with on_error: quarantine"),
        ({"on_error": "quarantine", "max_rejected": "150%"}, "expected a count"),
        ({"on_error": "quarantine", "max_rejected": -1}, "-1 is negative"),
        ({"on_error": "skip"}, "unknown on_error 'skip'"),
        ({"write_mode": "merge"}, "unknown write_mode 'merge'"),
        ({"batch_bytes": "lots"}, "batch_bytes"),
        ({"on_error": "quarantine", "dest_table": "x" * 60}, "too long for its quarantine table"),
    ],
)
def test_config_errors_for_the_new_keys(more: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**more)


def test_config_new_keys() -> None:
    upsert = config(write_mode="upsert", key=["ID"], batch_bytes="4MiB", on_error="quarantine", max_rejected="2.5%")
    assert upsert.key == ["id"] and upsert.columns[0].required
    assert upsert.batch_bytes == 4 * 1024 * 1024
    assert upsert.max_rejected_percent == 2.5 and upsert.max_rejected_count is None
    assert upsert.rejected_table == "t_rejected"


# -- found by review: each of these once loaded wrong rows or failed a valid file ---------------


def test_bytes_appended_after_the_end_was_checked_are_refused(tmp_path: Path) -> None:
    """The end of the file is checked once; a file that grows after that must not commit."""
    import gzip as gz

    from filedge_core.source import open_snapshot

    for name, body, extra in (
        ("f.csv", orders(24), b"999,1.5\n"),
        ("f.csv.gz", gz.compress(orders(24)), gz.compress(b"999,1.5\n")),
    ):
        path = tmp_path / name
        path.write_bytes(body)
        grown = []

        def grow() -> None:
            if not grown:
                grown.append(True)
                with path.open("ab") as out:
                    out.write(extra)

        with pytest.raises(FileChanged), open_snapshot(path, hash_bytes(body)) as snapshot:
            list(FileBatches(snapshot, config(), 64, check=grow))


@pytest.mark.parametrize("batch_bytes", [1, 2, 3, 5, 8, 13, 21, 34, 64, 1 << 20])
def test_blank_lines_at_the_end_are_never_a_record(batch_bytes: int) -> None:
    for rows in range(1, 12):
        for tail in (b"\n", b"\n\n", b"\r\n\r\n", b"\n\n\n\n"):
            data = orders(rows) + tail
            assert len(read_file(data, config(), batch_bytes)) == rows, (rows, tail)


def test_blank_lines_before_the_header_are_skipped_in_every_mode() -> None:
    data = b"\nid,amount\n1,1.5\nzz,2.5\n3\n"
    with pytest.raises(DataError, match=r"^line 5: 1 field, but the header has 2$"):
        read_file(data, config())
    with pytest.raises(DataError, match=r"^row 2 \(line 4\), column 'id': 'zz' is not a valid int$"):
        read_file(data[:-2], config())
    rejects = [r for b in FileBatches(snapshot_of(data), config(on_error="quarantine")) for r in b.rejects.rows()]
    assert rejects == [(2, 4, "id", "zz", "not a valid int"), (3, 5, None, "3", "1 field, but the header has 2")]


def test_decimals_with_an_exponent_are_refused_not_rounded() -> None:
    columns = [{"source": "id", "type": "int"}, {"source": "amount", "type": "decimal", "precision": 5, "scale": 2}]
    cfg = config(columns=columns, on_error="quarantine")
    batches = list(FileBatches(snapshot_of(b"id,amount\n1,1.5e-5\n2,1.50\n3,1.234e1\n"), cfg))
    assert [r[0] for b in batches for r in b.frame.rows()] == [2]
    assert [r[3] for b in batches for r in b.rejects.rows()] == ["1.5e-5", "1.234e1"]


def test_long_quoted_fields_load_and_an_unclosed_quote_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from filedge_core import source

    wide = b'id,amount\n1,"' + b"9" * 300_000 + b'"\n2,2.5\n'
    cfg = config(columns=[{"source": "id", "type": "int"}, {"source": "amount"}])
    assert read_file(wide, cfg, 1024)["amount"].str.len_chars().to_list() == [300_000, 3]
    unclosed = b'id,amount\n1,"open\n' + b"".join(b"%d,x\n" % i for i in range(2000))
    with pytest.raises(DataError, match=r"^line 2: bad quoting: a quoted field is never closed$"):
        read_file(unclosed, cfg, 1024)
    monkeypatch.setattr(source, "MAX_RECORD_BYTES", 4096)
    with pytest.raises(DataError, match=r"^line 2: a record longer than 0 MiB \(is a quote never closed\?\)$"):
        read_file(unclosed, cfg, 64)


def test_hostile_json_lines_are_data_errors() -> None:
    lines = [
        b'{"id": 1, "amount": 1.5}',
        b'{"id": 2, "amount": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": 3, "amount": "\\ud800"}',
        b'{"id": 4, "amount": "1\\u00005"}',
    ]
    data = b"\n".join(lines) + b"\n"
    columns = [{"source": "id", "type": "int"}, {"source": "amount"}]
    with pytest.raises(DataError, match=r"^line 2: invalid JSON: nested too deeply$"):
        read_file(data, config(format="jsonl", columns=columns))
    cfg = config(format="jsonl", columns=columns, on_error="quarantine")
    rejects = [r[4] for b in FileBatches(snapshot_of(data), cfg) for r in b.rejects.rows()]
    assert rejects == [
        "invalid JSON: nested too deeply",
        "key 'amount' holds an unpaired surrogate escape (e.g. \\ud800)",
        "key 'amount' holds a NUL character (\\u0000), which databases cannot store",
    ]


def test_read_ahead_keeps_order_and_raises_in_order() -> None:
    from filedge_core.batches import read_ahead

    batches = list(FileBatches(snapshot_of(orders(1000)), config(), 100))
    assert [b.frame["id"][0] for b in read_ahead(iter(batches))] == [b.frame["id"][0] for b in batches]

    def failing():
        yield batches[0]
        raise DataError("boom")

    seen = []
    with pytest.raises(DataError, match="boom"):
        for batch in read_ahead(failing()):
            seen.append(batch)
    assert len(seen) == 1
    # A consumer that stops early leaves no thread behind.
    import threading

    for _ in read_ahead(iter(batches)):
        break
    assert not [t for t in threading.enumerate() if t.name == "filedge-read-ahead"]


def test_messages_stay_on_one_line_whatever_the_file_holds() -> None:
    """Found by the property tests: a header name with a newline came back in the message."""
    with pytest.raises(DataError) as info:
        read_file(b'"\n\x01', config())
    assert "\n" not in str(info.value)
    assert str(info.value) == "missing columns 'id', 'amount' (file has: '\\n')"
