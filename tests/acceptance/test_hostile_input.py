"""Hostile input through the installed command: bad configurations, bad directories, bad files.
Each gets one line on stderr naming what is wrong, a defined exit code, no traceback; and
nothing is left half done in the audit table or the destination."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import WALKTHROUGH_CONFIG, Workspace, filedge, orders_csv


def one_line(result: Any, code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


BAD_CONFIGS = [
    ({"colums": []}, "colums: unknown key"),
    ({"retry_cap": -1}, "retry_cap: Input should be greater than or equal to 1"),
    ({"retry_cap": "three"}, "retry_cap: Input should be a valid integer"),
    ({"stale_timeout_minutes": 0}, "stale_timeout_minutes: Input should be greater than 0"),
    ({"connector": None}, "connector: Input should be a valid dictionary"),
    ({"connector": {"type": "oracle", "url": "x"}}, "connector.type: unknown connector type 'oracle'"),
    ({"connector": {"type": "postgresql", "url": "mysql://u:p@h/db"}}, "is not a postgresql:// URL"),
    ({"connector": {"type": "sqlite", "url": "postgresql://h/db"}}, "connector.url"),
    ({"dest_table": "orders; DROP TABLE x"}, "dest_table: 'orders; DROP TABLE x' is not a valid identifier"),
    ({"dest_table": '"x"'}, "dest_table: '\"x\"' is not a valid identifier"),
    ({"dest_table": "a.b.c"}, "dest_table: 'a.b.c' has more than one '.'"),
    ({"columns": [{"source": "order_id", "dest": "x\"; DROP TABLE y; --"}]}, "columns[0].dest"),
    ({"columns": [{"source": "order_id", "type": "flaot"}]}, "columns[0].type: unknown type 'flaot'"),
    ({"columns": []}, "columns: List should have at least 1 item"),
    ({"write_mode": "upsert"}, "write_mode upsert needs key"),
    ({"format": "xlsx"}, "format: unknown format 'xlsx'"),
    ({"csv": {"delimiter": ";;"}}, "csv.delimiter: ';;' must be a single one-byte character"),
    ({"connector": {"type": "postgresql", "url": "postgresql://u:${NOPE_UNSET_VAR}@h/db"}},
     "connector.url: environment variable 'NOPE_UNSET_VAR' is not set"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_are_one_line_exit_2_and_touch_nothing(ws: Workspace, overrides: dict, message: str) -> None:
    data = {**WALKTHROUGH_CONFIG, **overrides}
    if overrides.get("connector") is None and "connector" in overrides:
        data["connector"] = None
    ws.config_path.write_text(yaml.safe_dump(data))
    ws.add("a.csv", orders_csv(2))
    for result in (ws.run(), filedge("validate", "--config", str(ws.config_path))):
        one_line(result, 2, str(ws.config_path), message)
    assert not (ws.root / "filedge.db").exists() and not ws.dest_path.exists()


def test_config_that_is_not_yaml_or_not_a_mapping(ws: Workspace) -> None:
    ws.config_path.write_text("columns: [\n")
    one_line(ws.run(), 2, "invalid YAML", "line ")
    ws.config_path.write_text("- just\n- a list\n")
    one_line(ws.run(), 2, "expected a mapping of keys")
    ws.config_path.write_bytes(b"\xff\xfe\x00binary")
    one_line(ws.run(), 2, str(ws.config_path), "cannot read")
    missing = ws.root / "nope.yaml"
    one_line(filedge("run", "--dir", str(ws.incoming), "--config", str(missing)), 2, "nope.yaml: no such file")


def test_bad_directories(ws: Workspace, tmp_path: Path) -> None:
    base = ["run", "--config", str(ws.config_path), "--audit-db-url", ws.audit_url]
    one_line(filedge(*base, "--dir", str(tmp_path / "missing")), 2, "missing: no such directory")
    a_file = tmp_path / "file.csv"
    a_file.write_text(orders_csv(1))
    one_line(filedge(*base, "--dir", str(a_file)), 2, "file.csv: not a directory")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line(filedge(*base, "--dir", str(loop)), 2, "loop: cannot list: Too many levels of symbolic links")


def test_odd_entries_in_the_directory(ws: Workspace, tmp_path: Path) -> None:
    """Subdirectories (even one named like a file), symlinks (inside, outside, looping) and an
    unreadable file: only regular files are loaded, links are not followed."""
    ws.add("good.csv", orders_csv(2))
    (ws.incoming / "dir.csv").mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text(orders_csv(5, start=100))
    (ws.incoming / "link-out.csv").symlink_to(outside)
    (ws.incoming / "link-in.csv").symlink_to(ws.incoming / "good.csv")
    (ws.incoming / "loop-a.csv").symlink_to(ws.incoming / "loop-b.csv")
    (ws.incoming / "loop-b.csv").symlink_to(ws.incoming / "loop-a.csv")
    unreadable = ws.add("secret.csv", orders_csv(1, start=50))
    unreadable.chmod(0)
    try:
        result = ws.run()
    finally:
        unreadable.chmod(0o644)
    assert "Traceback" not in result.stderr
    if os.access(unreadable, os.R_OK) and os.geteuid() == 0:
        # root reads anything: the file simply loads
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Committed: 2 "), result.stdout
    else:
        assert result.returncode == 1
        assert "secret.csv: cannot read: Permission denied" in result.stderr
    assert ws.query("SELECT count(*) FROM orders WHERE CAST(order_id AS INTEGER) >= 100") == [(0,)]


BAD_FILES = [
    ("empty.csv", b"", "file is empty (no header row)"),
    ("blank.csv", b"\n\n  \n", "file is empty (no header row)"),
    ("binary.csv", bytes(range(256)) * 4, "NUL byte: this is a binary file, not text"),
    ("nul.csv", b"order_id,amount\n1,1.5\n2,\x002.5\n", "line 3: NUL byte"),
    ("latin1.csv", "order_id,amount\nçà,1.5\n".encode("latin-1"), "line 2: invalid UTF-8"),
    ("ragged.csv", b"order_id,amount\n1,1.5,extra\n", "line 2: 3 fields, but the header has 2"),
    ("quote.csv", b'order_id,amount\n"1,1.5\n', "line 2: bad quoting: a quoted field is never closed"),
    ("gzip-lie.csv.gz", b"\x1f\x8b" + b"not gzip at all", "corrupt gzip data"),
    ("no-such-column.csv", b"a,b\n1,2\n", "missing columns 'order_id', 'amount'"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_files_fail_alone_with_their_reason(ws: Workspace, name: str, content: bytes, message: str) -> None:
    ws.add("good.csv", orders_csv(2))
    ws.add(name, content)
    result = ws.run()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == "Committed: 1 Failed: 1 Skipped: 0 New: 2 Reclaimed: 0 Retried: 0"
    failed = [row for row in ws.audit().rows() if row.state == "FAILED"]
    assert len(failed) == 1 and failed[0].path.endswith(name)
    assert message in (failed[0].last_error or ""), failed[0].last_error
    assert failed[0].error_kind == "data"
    assert ws.query("SELECT count(*) FROM orders") == [(2,)]  # only the good file's rows
    listed = filedge("list", "--audit-db-url", ws.audit_url)
    assert message in listed.stdout


def test_header_only_file_commits_zero_rows(ws: Workspace) -> None:
    ws.add("header.csv", "order_id,amount\n")
    result = ws.run()
    assert result.returncode == 0, result.stderr
    assert ws.audit().rows()[0].rows_written == 0


def test_ten_thousand_columns_and_a_long_line(ws: Workspace) -> None:
    wide = ",".join(["order_id", "amount"] + [f"c{i}" for i in range(10_000)]) + "\n"
    wide += ",".join(["1", "1.5"] + ["x"] * 10_000) + "\n"
    ws.add("wide.csv", wide)
    long_line = "order_id,amount\n" + "2," + "9" * 20_000_000 + "\n"  # one 20 MB field
    ws.add("long.csv", long_line)
    result = ws.run()
    assert "Traceback" not in result.stderr
    rows = {Path(r.path).name: r for r in ws.audit().rows()}
    assert rows["wide.csv"].state == "COMMITTED" and rows["wide.csv"].rows_written == 1
    assert rows["long.csv"].state == "FAILED"
    assert "'amount'" in (rows["long.csv"].last_error or "")  # a 20-million-digit float is no float


def test_a_100_mb_single_line_is_refused_with_its_line(ws: Workspace) -> None:
    with (ws.incoming / "one-line.csv").open("wb") as out:
        out.write(b"order_id,amount\n1,")
        chunk = b"9" * (1 << 20)
        for _ in range(100):
            out.write(chunk)
    result = ws.run()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (row,) = ws.audit().rows()
    assert (row.state, row.error_kind) == ("FAILED", "data")
    assert row.last_error == "line 2: a record longer than 64 MiB (no end of line in it)"
