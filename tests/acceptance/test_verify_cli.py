"""The installed ``filedge verify``: output, exit codes, and ``--fix`` then ``run`` then
``verify`` reporting 0 disagreements."""

from __future__ import annotations

import json

import sqlalchemy as sa

from filedge_core.scan import hash_file
from tests.support import Workspace, filedge, orders_csv


def verify(ws: Workspace, *extra: str):
    return filedge("verify", "--config", str(ws.config_path), "--audit-db-url", ws.audit_url, *extra, cwd=ws.root)


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


def loaded(ws: Workspace) -> dict[str, str]:
    """Three files loaded by ``filedge run``; name -> hash."""
    for n, name in enumerate(("a.csv", "b.csv", "c.csv")):
        ws.add(name, orders_csv(3, start=10 * n))
    result = ws.run()
    assert result.returncode == 0, result.stderr
    return {name: hash_file(ws.incoming / name) for name in ("a.csv", "b.csv", "c.csv")}


def test_damage_then_fix_then_run_then_verify_agrees(ws: Workspace) -> None:
    hashes = loaded(ws)
    clean = sorted(ws.dest_rows())
    ok = verify(ws)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "Checked: 3 files; disagreements: 0; pending rewrite: 0\n", "")

    ws.execute(f"DELETE FROM orders WHERE _filedge_file_hash = '{hashes['a.csv']}' AND order_id = '1'")
    ws.execute(f"DELETE FROM _filedge_loads WHERE file_hash = '{hashes['b.csv']}'")
    audit = ws.audit()
    with audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE etl_file_audit SET rows_written = 4 WHERE file_hash = :h"), {"h": hashes["c.csv"]})
    audit.dispose()
    ws.execute("INSERT INTO orders (order_id, amount, _filedge_file_hash) VALUES ('x', 1.0, 'feedface')")

    found = verify(ws)
    assert found.returncode == 1, found.stderr
    path = {name: ws.incoming / name for name in hashes}
    assert found.stdout.splitlines() == [
        "orphan: feedface (not in the audit table): orders holds 1 row(s)",
        *sorted(
            [
                f"count mismatch: {hashes['a.csv'][:12]} COMMITTED {path['a.csv']}: rows_written 3, ledger row_count 3, orders holds 2 row(s)",
                f"missing ledger row: {hashes['b.csv'][:12]} COMMITTED {path['b.csv']}: rows_written 3, orders holds 3 row(s)",
                f"count mismatch: {hashes['c.csv'][:12]} COMMITTED {path['c.csv']}: rows_written 4, ledger row_count 3, orders holds 3 row(s)",
            ],
            key=lambda line: line.split(": ")[1],
        ),
        "Checked: 4 files; disagreements: 4; pending rewrite: 0",
    ]

    fixed = verify(ws, "--fix", "--dir", str(ws.incoming))
    assert fixed.returncode == 1, fixed.stderr  # disagreements were found
    lines = fixed.stdout.splitlines()
    assert lines[-1] == "Checked: 4 files; disagreements: 4; pending rewrite: 0; repaired: 3; not fixed: 1"
    assert sum(line.startswith("requeued: ") for line in lines) == 3
    assert "not fixed: feedface (not in the audit table): rows of a hash the audit does not know are never deleted" in fixed.stdout
    listed = filedge("list", "--audit-db-url", ws.audit_url, "--state", "PENDING").stdout
    assert listed.count("attempts=0") == 3 and listed.count("verify: ") == 3

    rerun = ws.run()
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout == "Committed: 3 Failed: 0 Skipped: 0 New: 0 Reclaimed: 0 Retried: 0\n"
    ws.execute("DELETE FROM orders WHERE _filedge_file_hash = 'feedface'")  # the orphan, by hand
    after = verify(ws)
    assert (after.returncode, after.stdout) == (0, "Checked: 3 files; disagreements: 0; pending rewrite: 0\n")
    assert sorted(ws.dest_rows()) == clean


def test_json(ws: Workspace) -> None:
    hashes = loaded(ws)
    ws.execute(f"DELETE FROM orders WHERE _filedge_file_hash = '{hashes['a.csv']}'")
    found = verify(ws, "--json")
    assert found.returncode == 1
    data = json.loads(found.stdout)
    assert (data["pipeline"], data["checked"], data["disagreements"], data["pending_rewrite"]) == ("orders", 3, 1, 0)
    assert data["findings"] == [
        {
            "kind": "count mismatch", "file_hash": hashes["a.csv"], "state": "COMMITTED",
            "path": str(ws.incoming / "a.csv"), "disagreement": True,
            "detail": "rows_written 3, ledger row_count 3, orders holds 0 row(s)",
        }
    ]
    assert "repairs" not in data
    fixed = json.loads(verify(ws, "--json", "--fix").stdout)
    assert [(r["file_hash"], r["action"]) for r in fixed["repairs"]] == [(hashes["a.csv"], "requeued")]


def test_a_crash_after_the_destination_commit_is_a_pending_rewrite(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(3))
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_dest_commit"})
    assert crashed.returncode == 86, crashed.stderr
    found = verify(ws)
    assert found.returncode == 0, found.stderr
    short = hash_file(ws.incoming / "a.csv")[:12]
    assert found.stdout.splitlines() == [
        (
            f"pending rewrite: {short} PROCESSING {ws.incoming / 'a.csv'}: orders holds 3 row(s) of this file; "
            "the next run rewrites them"
        ),
        "Checked: 1 files; disagreements: 0; pending rewrite: 1",
    ]
    ws.age_leases()
    assert ws.run().returncode == 0
    assert verify(ws).stdout == "Checked: 1 files; disagreements: 0; pending rewrite: 0\n"


def test_errors_are_one_line_with_their_exit_codes(ws: Workspace) -> None:
    loaded(ws)
    nowhere = ws.root / "nowhere.db"
    assert_one_line_error(
        filedge("verify", "--config", str(ws.config_path), "--audit-db-url", f"sqlite:///{nowhere}"),
        2, "has no audit table (etl_file_audit)",
    )
    assert not nowhere.exists()
    assert_one_line_error(verify(ws, "--fix", "--dir", str(ws.root / "missing")), 2, "missing")
    ws.config_path.write_text(ws.config_path.read_text().replace("type: float", "type: flaot"))
    assert_one_line_error(verify(ws), 2, "pipeline.yaml: columns[1].type: unknown type 'flaot'")
    assert_one_line_error(filedge("verify", "--config", str(ws.root / "none.yaml"), "--audit-db-url", ws.audit_url), 2)
    # A database that cannot be read: 3, not the 1 of "disagreements found"; the password masked.
    unreachable = "postgresql://filedge:s3cret-pw@127.0.0.1:1/filedge"
    ws.configure()
    result = filedge("verify", "--config", str(ws.config_path), "--audit-db-url", unreachable)
    assert_one_line_error(result, 3, "audit database postgresql://filedge:***@127.0.0.1:1/filedge")
    assert "s3cret-pw" not in result.stderr
