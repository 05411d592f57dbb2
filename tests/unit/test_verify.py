"""``filedge verify`` on real SQLite files: files are really loaded (in-process, or by a crashed
``filedge run``), then the destination or the audit table is damaged with SQL; verify must report
exactly that, in every write mode, and ``--fix`` then a run must restore agreement.

tests/integration/test_verify_postgres.py runs these same tests on PostgreSQL by overriding the
``make_ws`` fixture."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from filedge_core.errors import UsageError
from filedge_core.runner import plan_run, run_pipeline, work
from filedge_core.scan import hash_file
from filedge_core.verify import (
    COUNTS,
    NO_LEDGER,
    NOT_FIXED,
    ORPHAN,
    PENDING_REWRITE,
    QUEUED,
    REJECTS,
    REPLACED,
    REQUEUED,
    STRANDED,
    TOKEN,
    TOKEN_RAISED,
    VerifyReport,
    open_audit,
    verify_pipeline,
)
from tests.support import Workspace, configure_write_mode

MODES = ["append", "upsert", "replace"]
# Three files seen in one scan (ordered by name), each with one bad row (quarantined); in upsert
# b.csv takes key 3 over from a.csv and c.csv takes key 1, so a.csv keeps fewer rows than it wrote.
FILES = {
    "a.csv": "order_id,amount\n1,1.50\n2,2.50\n3,3.50\nx9,oops\n",
    "b.csv": "order_id,amount\n3,30.00\n4,40.00\n5,50.00\n7,\n",
    "c.csv": "order_id,amount\n6,600.00\n1,100.00\n8,not-a-number\n",
}

MakeWs = Callable[..., Workspace]


def workspace(root: Path, mode: str, urls: str | None = None) -> Workspace:
    """A workspace for a write mode with the three files in incoming/: SQLite files, or the
    audit table and the destination both at ``urls``."""
    ws = Workspace(root, audit_url=urls, dest_url=urls)
    configure_write_mode(ws, mode)
    for name, text in FILES.items():
        ws.add(name, text)
    return ws


@pytest.fixture
def make_ws(tmp_path: Path) -> MakeWs:
    return lambda mode: workspace(tmp_path, mode)


def load(ws: Workspace, reverse: bool = False) -> None:
    """Load every file in-process (``reverse``: claim them newest first)."""
    audit = ws.audit()
    try:
        if reverse:
            plan = plan_run(ws.config(), ws.incoming, audit)
            summary = work(ws.config(), plan.items[::-1], audit, plan.summary)
        else:
            summary = run_pipeline(ws.config(), ws.incoming, audit)
    finally:
        audit.dispose()
    assert summary.failed == 0, summary.results


def verify(ws: Workspace, fix: bool = False, directory: Path | None = None) -> VerifyReport:
    audit = open_audit(ws.audit_url)
    try:
        return verify_pipeline(ws.config(), audit, fix=fix, directory=directory)
    finally:
        audit.dispose()


def names(ws: Workspace) -> dict[str, str]:
    """File hash -> file name, for the files in incoming/."""
    return {hash_file(path): path.name for path in ws.incoming.iterdir()}


def h(ws: Workspace, name: str) -> str:
    return hash_file(ws.incoming / name)


def found(ws: Workspace, report: VerifyReport, disagreement: bool = True) -> list[tuple[str, str]]:
    """(kind, file name or short hash) of each finding, sorted."""
    known = names(ws)
    return sorted(
        (f.kind, known.get(f.file_hash, f.file_hash[:12]))
        for f in report.findings
        if f.disagreement == disagreement
    )


def audit_sql(ws: Workspace, statement: str, **params: Any) -> None:
    audit = ws.audit()
    try:
        with audit.engine.begin() as conn:
            conn.execute(sa.text(statement), params)
    finally:
        audit.dispose()


def table(ws: Workspace) -> list[tuple[str, str, str]]:
    return sorted((str(k), str(a), h) for k, a, h in ws.query("SELECT order_id, amount, _filedge_file_hash FROM orders"))


def insert_row(ws: Workspace, mode: str, file_hash: str, order_id: int) -> None:
    """A destination row tagged ``file_hash``, as another writer (or a person) would add it."""
    columns, values = ["order_id", "amount", "_filedge_file_hash"], [str(order_id), "9.99", f"'{file_hash}'"]
    if mode == "upsert":
        columns.append("_filedge_file_order")
        values.append("'9999'")
    if not ws.dest_url.startswith("sqlite"):
        columns.append("_filedge_claim_token")
        values.append("1")
    ws.execute(f"INSERT INTO orders ({', '.join(columns)}) VALUES ({', '.join(values)})")


def fix_run_verify(ws: Workspace, expected_table: list[tuple[str, str, str]] | None = None) -> VerifyReport:
    """``verify --fix --dir``, then a run, then verify: which must agree."""
    fixed = verify(ws, fix=True, directory=ws.incoming)
    assert fixed.repairs is not None and all(r.action != NOT_FIXED for r in fixed.repairs), fixed.repairs
    load(ws)
    after = verify(ws)
    assert after.disagreements == 0, [f.line() for f in after.findings]
    assert after.exit_code == 0
    if expected_table is not None:
        assert table(ws) == expected_table
    return fixed


# -- what agrees --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_clean_load_agrees_in_every_mode(make_ws: MakeWs, mode: str) -> None:
    ws = make_ws(mode)
    load(ws)
    report = verify(ws)
    assert report.findings == [], [f.line() for f in report.findings]
    assert (report.checked, report.exit_code) == (3, 0)
    assert report.summary() == "Checked: 3 files; disagreements: 0; pending rewrite: 0"
    if mode == "upsert":  # the takeovers that make this interesting did happen
        assert ws.rows_per_hash()[h(ws, "a.csv")] == 1
    if mode == "replace":  # and so did the replacing
        assert ws.ledger()[h(ws, "a.csv")] == 0 and set(ws.rows_per_hash()) == {h(ws, "c.csv")}


def test_replace_superseded_snapshots_agree(make_ws: MakeWs) -> None:
    ws = make_ws("replace")
    load(ws, reverse=True)  # c.csv first: a.csv and b.csv commit 0 rows, with no ledger row
    assert set(ws.ledger()) == {h(ws, "c.csv")}
    report = verify(ws)
    assert report.findings == [], [f.line() for f in report.findings]


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_a_deleted_newer_snapshot_in_upsert_is_reported_but_a_takeover_is_not(make_ws: MakeWs, mode: str) -> None:
    ws = make_ws(mode)
    load(ws)
    ws.execute(f"DELETE FROM orders WHERE _filedge_file_hash = '{h(ws, 'a.csv')}' AND order_id = 2")
    report = verify(ws)
    if mode == "append":
        assert found(ws, report) == [(COUNTS, "a.csv")]
    else:
        # a.csv wrote 3 rows and holds 0 now: newer files took over keys 1 and 3, and by counts
        # alone verify cannot tell the deleted one from those (docs/verify.md).
        assert found(ws, report) == []


# -- each kind of damage, in each mode, and its repair --------------------------------------------


def _delete_rows(ws: Workspace, mode: str) -> None:
    ws.execute(f"DELETE FROM orders WHERE _filedge_file_hash = '{h(ws, 'c.csv')}' AND order_id = 6")


def _delete_ledger_row(ws: Workspace, mode: str) -> None:
    ws.execute(f"DELETE FROM _filedge_loads WHERE file_hash = '{h(ws, 'c.csv')}'")


def _wrong_rows_written(ws: Workspace, mode: str) -> None:
    audit_sql(ws, "UPDATE etl_file_audit SET rows_written = 99 WHERE file_hash = :h", h=h(ws, "c.csv"))


def _delete_rejects(ws: Workspace, mode: str) -> None:
    ws.execute(f"DELETE FROM orders_rejected WHERE _filedge_file_hash = '{h(ws, 'c.csv')}'")


def _duplicate_rows(ws: Workspace, mode: str) -> None:
    insert_row(ws, mode, h(ws, "c.csv"), 6)  # append: c.csv's row 6 twice


DAMAGES = {
    "deleted rows": (_delete_rows, COUNTS),
    "deleted ledger row": (_delete_ledger_row, NO_LEDGER),
    "wrong rows_written": (_wrong_rows_written, COUNTS),
    "deleted rejects": (_delete_rejects, REJECTS),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("mode", MODES)
def test_damage_is_reported_and_fix_then_run_restores_agreement(make_ws: MakeWs, mode: str, damage: str) -> None:
    ws = make_ws(mode)
    load(ws)
    clean = table(ws)
    damage_it, kind = DAMAGES[damage]
    damage_it(ws, mode)
    report = verify(ws)
    assert found(ws, report) == [(kind, "c.csv")], [f.line() for f in report.findings]
    assert report.exit_code == 1
    fixed = fix_run_verify(ws, clean)
    assert fixed.repairs is not None
    assert [(r.action, names(ws)[r.file_hash]) for r in fixed.repairs] == [(REQUEUED, "c.csv")]
    assert fixed.summary() == "Checked: 3 files; disagreements: 1; pending rewrite: 0; repaired: 1; not fixed: 0"


def test_duplicated_rows_in_append_are_reported_and_reloaded(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    load(ws)
    clean = table(ws)
    _duplicate_rows(ws, "append")
    assert found(ws, verify(ws)) == [(COUNTS, "c.csv")]
    fix_run_verify(ws, clean)


def test_requeued_file_says_why(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    load(ws)
    _delete_rows(ws, "append")
    verify(ws, fix=True)
    audit = ws.audit()
    try:
        row = audit.get(ws.config().name, h(ws, "c.csv"))
    finally:
        audit.dispose()
    assert row is not None and (row.state, row.attempts) == ("PENDING", 0)
    assert row.last_error == "verify: count mismatch: rows_written 2, ledger row_count 2, orders holds 1 row(s)"


def test_replace_damage_to_a_replaced_snapshot(make_ws: MakeWs) -> None:
    ws = make_ws("replace")
    load(ws)
    clean = table(ws)
    # Not disagreements: a replaced snapshot needs no ledger row, and its rows_written is what it
    # loaded back then.
    ws.execute(f"DELETE FROM _filedge_loads WHERE file_hash = '{h(ws, 'a.csv')}'")
    audit_sql(ws, "UPDATE etl_file_audit SET rows_written = 42 WHERE file_hash = :h", h=h(ws, "b.csv"))
    assert verify(ws).findings == []
    # Disagreements: rows or a ledger count left for a replaced snapshot. The current one's
    # reload (c.csv) repairs them both, since a replace deletes every row and zeroes the others.
    insert_row(ws, "replace", h(ws, "a.csv"), 77)
    ws.execute(f"UPDATE _filedge_loads SET row_count = 5 WHERE file_hash = '{h(ws, 'b.csv')}'")
    report = verify(ws)
    assert found(ws, report) == [(REPLACED, "a.csv"), (REPLACED, "b.csv")]
    assert all(f.target == h(ws, "c.csv") for f in report.findings)
    fixed = fix_run_verify(ws, clean)
    assert fixed.repairs is not None
    assert [(r.action, names(ws)[r.file_hash], r.findings) for r in fixed.repairs] == [(REQUEUED, "c.csv", 2)]


def test_replace_current_snapshot_without_its_ledger_row_is_still_current(make_ws: MakeWs) -> None:
    # With c.csv's ledger row gone, b.csv is the latest in the ledger; reloading b.csv would put
    # an older snapshot back. The current snapshot is c.csv, known from the audit row.
    ws = make_ws("replace")
    load(ws)
    clean = table(ws)
    _delete_ledger_row(ws, "replace")
    report = verify(ws)
    assert found(ws, report) == [(NO_LEDGER, "c.csv")]
    fix_run_verify(ws, clean)


# -- orphans --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_orphan_rows_are_reported_and_never_deleted(make_ws: MakeWs, mode: str) -> None:
    ws = make_ws(mode)
    load(ws)
    orphan, ledger_only = "f" * 64, "e" * 64
    insert_row(ws, mode, orphan, 999)
    ws.execute(
        "INSERT INTO _filedge_loads (pipeline, file_hash, dest_table, claim_token, row_count, loaded_at) "
        f"VALUES ('orders', '{ledger_only}', 'orders', 2, 0, '2026-01-01T00:00:00Z')"
    )
    report = verify(ws)
    assert found(ws, report) == [(ORPHAN, ledger_only[:12]), (ORPHAN, orphan[:12])]
    assert report.checked == 5
    assert [f.line() for f in report.findings] == [
        f"orphan: {ledger_only[:12]} (not in the audit table): orders holds 0 row(s), ledger row_count 0 (token 2)",
        f"orphan: {orphan[:12]} (not in the audit table): orders holds 1 row(s)",
    ]
    fixed = verify(ws, fix=True, directory=ws.incoming)
    assert fixed.repairs is not None and [r.action for r in fixed.repairs] == [NOT_FIXED, NOT_FIXED]
    load(ws)
    after = verify(ws)
    assert found(ws, after) == found(ws, report) and after.exit_code == 1
    assert ws.rows_per_hash()[orphan] == 1 and ledger_only in ws.ledger()


def test_rows_of_a_file_the_audit_lost_are_orphans_until_a_run_registers_it_again(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    load(ws)
    audit_sql(ws, "DELETE FROM etl_file_audit WHERE file_hash = :h", h=h(ws, "b.csv"))
    report = verify(ws)
    assert found(ws, report) == [(ORPHAN, "b.csv")]
    assert "orders holds 3 row(s), orders_rejected 1 rejected row(s), ledger row_count 3 (token 1)" in report.findings[0].detail
    load(ws)  # b.csv is still in incoming/: registered again, and rewritten under token 1
    assert verify(ws).findings == []


# -- files that are not COMMITTED -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rows_of_a_crashed_attempt_are_a_pending_rewrite(make_ws: MakeWs, mode: str) -> None:
    ws = make_ws(mode)
    (ws.incoming / "a.csv").unlink()
    (ws.incoming / "b.csv").unlink()
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_dest_commit"})
    assert crashed.returncode == 86, crashed.stderr
    report = verify(ws)
    assert found(ws, report) == []
    assert found(ws, report, disagreement=False) == [(PENDING_REWRITE, "c.csv")]
    assert (report.exit_code, report.pending) == (0, 1)
    assert report.findings[0].line().startswith(f"pending rewrite: {h(ws, 'c.csv')[:12]} PROCESSING ")
    ws.age_leases()
    load(ws)
    assert verify(ws).findings == []


def test_rows_of_a_file_that_failed_for_good_are_stranded(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    (ws.incoming / "a.csv").unlink()
    (ws.incoming / "b.csv").unlink()
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_dest_commit"})
    assert crashed.returncode == 86, crashed.stderr
    # The retry meets a data error (the config changed since): FAILED for good, rows left behind.
    good = ws.config_path.read_text()
    ws.config_path.write_text(good.replace("scale: 2", "scale: 1").replace("on_error: quarantine", "on_error: fail"))
    ws.age_leases()
    assert ws.run().returncode == 1
    ws.config_path.write_text(good)
    report = verify(ws)
    assert found(ws, report) == [(STRANDED, "c.csv")]
    assert "which no run will retry (attempts 2/3, data error)" in report.findings[0].detail
    fix_run_verify(ws)
    assert sorted(ws.rows_per_hash().values()) == [2]


def test_a_ledger_token_ahead_is_raised_so_a_reload_is_not_fenced(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    load(ws)
    clean = table(ws)
    ws.execute(f"UPDATE _filedge_loads SET claim_token = 7 WHERE file_hash = '{h(ws, 'b.csv')}'")
    ws.execute(f"UPDATE _filedge_loads SET claim_token = 5 WHERE file_hash = '{h(ws, 'c.csv')}'")
    _delete_rows(ws, "append")
    report = verify(ws)
    assert found(ws, report) == [(COUNTS, "c.csv"), (TOKEN, "b.csv"), (TOKEN, "c.csv")]
    fixed = fix_run_verify(ws, clean)
    assert fixed.repairs is not None
    assert sorted((r.action, names(ws)[r.file_hash]) for r in fixed.repairs) == [(REQUEUED, "c.csv"), (TOKEN_RAISED, "b.csv")]
    audit = ws.audit()
    try:
        tokens = {names(ws)[row.file_hash]: row.claim_token for row in audit.rows()}
    finally:
        audit.dispose()
    assert tokens == {"a.csv": 1, "b.csv": 7, "c.csv": 6}  # c.csv: raised to 5, then claimed


def test_a_pending_file_behind_the_ledger_gets_its_token_raised(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    (ws.incoming / "a.csv").unlink()
    (ws.incoming / "b.csv").unlink()
    assert ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_dest_commit"}).returncode == 86
    ws.age_leases()
    audit = ws.audit()
    try:
        audit.reclaim_stale(ws.config().name, 60, 3)  # PENDING, with its rows: the next run rewrites them
    finally:
        audit.dispose()
    ws.execute("UPDATE _filedge_loads SET claim_token = 9")
    report = verify(ws)
    assert found(ws, report) == [(TOKEN, "c.csv")]
    assert found(ws, report, disagreement=False) == [(PENDING_REWRITE, "c.csv")]
    fixed = verify(ws, fix=True)
    assert fixed.repairs is not None and [r.action for r in fixed.repairs] == [TOKEN_RAISED]
    load(ws)
    assert verify(ws).findings == []


# -- what --fix cannot do ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_dir", [True, False])
def test_fix_leaves_a_file_whose_bytes_are_gone(make_ws: MakeWs, with_dir: bool) -> None:
    ws = make_ws("append")
    load(ws)
    c_hash = h(ws, "c.csv")
    _delete_rows(ws, "append")
    (ws.incoming / "c.csv").rename(ws.root / "c.csv")
    fixed = verify(ws, fix=True, directory=ws.incoming if with_dir else None)
    assert fixed.repairs is not None
    assert [(r.action, r.file_hash) for r in fixed.repairs] == [(NOT_FIXED, c_hash)]
    where = f"in {ws.incoming}" if with_dir else f"at {ws.incoming / 'c.csv'}"
    assert fixed.repairs[0].detail == f"its bytes are not {where} any more, so no run could reload it"
    assert fixed.summary().endswith("; repaired: 0; not fixed: 1")
    assert verify(ws).disagreements == 1  # still COMMITTED, still reported
    # Under another name in the directory: --dir finds the bytes (as a run does), the recorded path does not.
    (ws.root / "c.csv").rename(ws.incoming / "c-renamed.csv")
    again = verify(ws, fix=True, directory=ws.incoming if with_dir else None)
    assert again.repairs is not None and [r.action for r in again.repairs] == [REQUEUED if with_dir else NOT_FIXED]


def test_upsert_extra_rows_are_reported_not_reloaded(make_ws: MakeWs) -> None:
    ws = make_ws("upsert")
    load(ws)
    insert_row(ws, "upsert", h(ws, "c.csv"), 999)
    report = verify(ws)
    assert found(ws, report) == [(COUNTS, "c.csv")]
    fixed = verify(ws, fix=True, directory=ws.incoming)
    assert fixed.repairs is not None and [r.action for r in fixed.repairs] == [NOT_FIXED]
    assert "upsert never deletes rows" in fixed.repairs[0].detail


@pytest.mark.parametrize("state", ["PENDING", "PROCESSING"])
def test_a_replace_snapshot_that_will_be_loaded_anyway_is_left_to_the_run(make_ws: MakeWs, state: str) -> None:
    ws = make_ws("replace")
    load(ws)
    clean = table(ws)
    insert_row(ws, "replace", h(ws, "a.csv"), 77)
    audit_sql(ws, "UPDATE etl_file_audit SET state = :s WHERE file_hash = :h", s=state, h=h(ws, "c.csv"))
    report = verify(ws, fix=True)
    assert found(ws, report) == [(REPLACED, "a.csv")]
    assert found(ws, report, disagreement=False) == [(PENDING_REWRITE, "c.csv")]
    assert report.repairs is not None and [(r.action, r.detail) for r in report.repairs] == [
        (QUEUED, "PENDING: the next run reloads it" if state == "PENDING"
         else "PROCESSING: its load under way, or its retry, rewrites it")
    ]
    ws.age_leases()
    load(ws)
    assert verify(ws).findings == [] and table(ws) == clean


def test_replace_with_an_orphan_as_the_latest_snapshot(make_ws: MakeWs) -> None:
    ws = make_ws("replace")
    load(ws)
    orphan = "d" * 64
    ws.execute(
        "INSERT INTO _filedge_loads (pipeline, file_hash, dest_table, claim_token, row_count, loaded_at, file_order) "
        f"VALUES ('orders', '{orphan}', 'orders', 1, 0, '2026-01-01T00:00:00Z', '9999')"
    )
    report = verify(ws, fix=True, directory=ws.incoming)
    assert found(ws, report) == [(ORPHAN, orphan[:12]), (REPLACED, "c.csv")]
    assert report.repairs is not None
    assert [(r.action, r.detail) for r in report.repairs] == [
        (NOT_FIXED, "rows of a hash the audit does not know are never deleted by filedge (docs/verify.md)"),
        (NOT_FIXED, "the current snapshot is not in the audit table"),
    ]


# -- reading while runs commit, and the wrong databases ---------------------------------------------


def test_a_file_committed_while_verify_reads_is_not_checked(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    load(ws)
    _delete_rows(ws, "append")
    # As if c.csv's audit commit came after verify had read the destination.
    later = "9999-01-01T00:00:00.000Z" if ws.audit_url.startswith("sqlite") else datetime(9999, 1, 1, tzinfo=timezone.utc)
    audit_sql(ws, "UPDATE etl_file_audit SET committed_at = :t WHERE file_hash = :h", t=later, h=h(ws, "c.csv"))
    report = verify(ws)
    assert (report.findings, report.in_flight, report.checked) == ([], 1, 3)


def test_no_audit_table_is_a_usage_error_and_creates_nothing(make_ws: MakeWs, tmp_path: Path) -> None:
    ws = make_ws("append")
    load(ws)
    missing = tmp_path / "elsewhere" / "filedge.db"
    missing.parent.mkdir()
    with pytest.raises(UsageError, match="has no audit table"):
        open_audit(f"sqlite:///{missing}")
    assert not missing.exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_lost_destination_is_reloaded(make_ws: MakeWs, mode: str) -> None:
    ws = make_ws(mode)
    load(ws)
    clean = table(ws)
    if ws.dest_url.startswith("sqlite"):
        for path in ws.root.glob("orders.db*"):
            path.unlink()
    else:
        ws.execute("DROP TABLE orders, orders_rejected, _filedge_loads")
    report = verify(ws)
    expected = [(NO_LEDGER, "c.csv")] if mode == "replace" else [(NO_LEDGER, n) for n in sorted(FILES)]
    assert found(ws, report) == expected
    fix_run_verify(ws, clean)
