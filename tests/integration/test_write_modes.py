"""Write modes × crash points × both databases, with quarantined bad rows, through real
``filedge run`` processes: after a crash at any step and the reruns that recover from it, the
destination holds exactly what one clean run would have left."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from filedge_core.faults import CRASH_EXIT_CODE, STEPS
from filedge_core.scan import hash_file
from tests.support import Workspace, configure_write_mode

# Three files, first seen in the same scan, so their order is by name. Each has one bad row
# (quarantined). b.csv repeats key 5 (the last one wins in upsert), and the files overlap on
# keys 1 and 3 (the newest file's row wins in upsert).
FILES = {
    "a.csv": [("1", "1.50"), ("2", "2.50"), ("3", "3.50"), ("x9", "oops")],
    "b.csv": [("3", "30.00"), ("4", "40.00"), ("5", "50.00"), ("5", "55.00"), ("7", "")],
    "c.csv": [("6", "600.00"), ("1", "100.00"), ("8", "not-a-number")],
}
BAD_ROWS = {"a.csv": 1, "b.csv": 1, "c.csv": 1}
REJECT_RECORDS = {"a.csv": 2, "b.csv": 1, "c.csv": 1}  # one per bad value: a.csv's row has two


def good_rows(name: str) -> list[tuple[int, Decimal]]:
    rows = []
    for key, amount in FILES[name]:
        try:
            rows.append((int(key), Decimal(amount)))
        except (ValueError, ArithmeticError):
            continue
    return rows


def expected_table(mode: str) -> list[tuple[int, Decimal]]:
    if mode == "append":
        return sorted(row for name in FILES for row in good_rows(name))
    if mode == "replace":
        return sorted(good_rows("c.csv"))
    merged: dict[int, Decimal] = {}
    for name in sorted(FILES):
        for key, amount in good_rows(name):
            merged[key] = amount
    return sorted(merged.items())


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite files; a fresh PostgreSQL database URL (audit and destination) otherwise."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_database")


def workspace(tmp_path: Path, backend: str | None, mode: str) -> Workspace:
    ws = Workspace(tmp_path, audit_url=backend, dest_url=backend)
    configure_write_mode(ws, mode)
    for name, rows in FILES.items():
        ws.add(name, "order_id,amount\n" + "".join(f"{k},{a}\n" for k, a in rows))
    return ws


def table(ws: Workspace) -> list[tuple[int, Decimal]]:
    return sorted((int(k), Decimal(str(a))) for k, a in ws.query("SELECT order_id, amount FROM orders"))


def assert_clean_state(ws: Workspace, mode: str) -> None:
    assert table(ws) == expected_table(mode)
    # replace: the table is the newest snapshot, and its rejects are the snapshot's.
    expected_rejects = {"c.csv": 1} if mode == "replace" else REJECT_RECORDS
    audit = ws.audit()
    try:
        assert audit.counts() == {"PENDING": 0, "PROCESSING": 0, "COMMITTED": 3, "FAILED": 0}
        hashes = {hash_file(ws.incoming / name): name for name in FILES}
        for row in audit.rows():
            name = hashes[row.file_hash]
            if name in expected_rejects:  # (an older snapshot may be superseded unread)
                assert row.rows_rejected == BAD_ROWS[name], row
    finally:
        audit.dispose()
    rejects = ws.query("SELECT _filedge_file_hash, count(*) FROM orders_rejected GROUP BY 1")
    assert {hashes[h]: n for h, n in rejects} == expected_rejects  # once each, never duplicated by a retry


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_clean_run(tmp_path: Path, backend: str | None, mode: str) -> None:
    ws = workspace(tmp_path, backend, mode)
    result = ws.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Committed: 3 Failed: 0 Skipped: 0 New: 3 Reclaimed: 0 Retried: 0"
    assert "1 row(s) quarantined in orders_rejected" in result.stderr
    assert_clean_state(ws, mode)
    reject = ws.query("SELECT line_number, column_name, raw_value, reason FROM orders_rejected ORDER BY 1, 2")
    c_reject = (4, "amount", "not-a-number", "not a valid decimal")
    if mode == "replace":
        assert reject == [c_reject]
        return
    assert c_reject in reject
    assert (5, "order_id", "x9", "not a valid int") in reject
    assert (6, "amount", "", "required value is missing") in reject  # b.csv line 6: "7,"


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_crash_then_recover_leaves_the_clean_state(tmp_path: Path, backend: str | None, mode: str, step: str) -> None:
    ws = workspace(tmp_path, backend, mode)
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": step})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    rerun = ws.run()  # the crashed lease is fresh: the other files commit now, in another order
    assert rerun.returncode == 0, rerun.stderr
    ws.age_leases()
    final = ws.run()
    assert final.returncode == 0, final.stderr
    assert_clean_state(ws, mode)
    if mode == "replace" and step != "after_audit_commit":
        # a.csv commits last, but c.csv is the newer snapshot: a.csv writes nothing.
        assert "not loaded: a newer snapshot" in final.stderr


def test_replace_keeps_the_newest_snapshot_whatever_the_commit_order(tmp_path: Path, backend: str | None) -> None:
    ws = workspace(tmp_path, backend, "replace")
    (ws.incoming / "c.csv").unlink()
    first = ws.run()
    assert first.returncode == 0, first.stderr
    assert table(ws) == sorted(good_rows("b.csv"))
    assert dict(ws.query("SELECT file_hash, row_count FROM _filedge_loads")) == {
        hash_file(ws.incoming / "a.csv"): 0,  # its rows were replaced
        hash_file(ws.incoming / "b.csv"): len(good_rows("b.csv")),
    }
    ws.add("c.csv", "order_id,amount\n6,600.00\n1,100.00\n8,not-a-number\n")
    second = ws.run()
    assert second.returncode == 0, second.stderr
    assert table(ws) == sorted(good_rows("c.csv"))


def test_upsert_needs_a_key_and_merges_on_it(tmp_path: Path, backend: str | None) -> None:
    ws = workspace(tmp_path, backend, "upsert")
    assert ws.run().returncode == 0
    # A later file (seen in a later scan) wins over every earlier one for its keys.
    ws.add("d.csv", "order_id,amount\n1,0.01\n4,0.04\n")
    second = ws.run()
    assert second.returncode == 0, second.stderr
    merged = dict(expected_table("upsert")) | {1: Decimal("0.01"), 4: Decimal("0.04")}
    assert table(ws) == sorted(merged.items())
