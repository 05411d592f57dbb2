"""The runner in-process on real SQLite files: summaries, error classes, identity by content."""

from __future__ import annotations

import sqlite3

import pytest

from filedge_core.connectors import open_connector
from filedge_core.errors import ConfigError, DatabaseUnavailable
from filedge_core.runner import process_claim, run_pipeline
from filedge_core.scan import hash_file
from tests.support import Workspace, orders_csv


def run(ws: Workspace):
    audit = ws.audit()
    try:
        return run_pipeline(ws.config(), ws.incoming, audit)
    finally:
        audit.dispose()


def test_data_error_fails_one_file_and_commits_the_others(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(3))
    ws.add("b.csv", "order_id,amount\n1,2\n2,abc\n")
    ws.add("c.csv", orders_csv(2, start=10))
    summary = run(ws)
    assert summary.line() == "Committed: 2 Failed: 1 Skipped: 0 New: 3 Reclaimed: 0 Retried: 0"
    assert summary.exit_code == 1
    failed = ws.audit().rows(state="FAILED")
    assert len(failed) == 1 and failed[0].path.endswith("b.csv")
    assert failed[0].last_error == "row 2 (line 3), column 'amount': 'abc' is not a valid float"
    assert failed[0].error_kind == "data"
    assert len(ws.dest_rows()) == 5
    # A data error is terminal: the next run does not touch it, and says so.
    again = run(ws)
    assert again.line() == "Committed: 0 Failed: 0 Skipped: 3 New: 0 Reclaimed: 0 Retried: 0"
    assert any("requeue --hash" in w for w in again.warnings)


def test_same_bytes_under_two_names_load_once(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(3))
    ws.add("copy-of-a.csv", orders_csv(3))
    assert run(ws).line() == "Committed: 1 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0"
    assert len(ws.dest_rows()) == 3
    (ws.incoming / "a.csv").unlink()
    assert run(ws).line() == "Committed: 0 Failed: 0 Skipped: 1 New: 0 Reclaimed: 0 Retried: 0"


def test_ignored_names_and_globs(ws: Workspace) -> None:
    for name in ("a.csv", ".hidden.csv", "b.csv.tmp", "c.part", "notes.txt"):
        ws.add(name, orders_csv(1, start=len(name)))
    (ws.incoming / "subdir").mkdir()
    ws.configure(include=["*.csv"], exclude=["skip-*"])
    ws.add("skip-me.csv", orders_csv(1, start=99))
    assert run(ws).line() == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"


def test_file_changed_while_read_is_released_not_committed(ws: Workspace) -> None:
    path = ws.add("a.csv", orders_csv(3))
    config, audit = ws.config(), ws.audit()
    file_hash = hash_file(path)
    audit.register(config.name, file_hash, str(path), path.stat().st_size, config.config_hash)
    claim = audit.claim(config.name, file_hash, "w", config.retry_cap, config.config_hash)
    path.write_text(orders_csv(4))  # the file is rewritten after it was hashed
    connector = open_connector(config)
    connector.prepare()
    result = process_claim(claim, str(path), config, audit, connector)
    assert result.outcome == "released" and "changed while being read" in result.error
    row = audit.get(config.name, file_hash)
    assert row.state == "PENDING" and row.rows_written is None
    assert ws.dest_rows() == []
    # The new content is a new file; the old hash stays claimable but has no bytes any more.
    assert run(ws).line() == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"
    assert len(ws.dest_rows()) == 4


def test_transient_destination_error_is_retried_next_run(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(2))
    ws.add("b.csv", orders_csv(2, start=100))
    run(ws)  # creates the table
    ws.add("c.csv", orders_csv(2, start=200))
    with sqlite3.connect(ws.dest_path) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON orders WHEN NEW.order_id = '200' "
                     "BEGIN SELECT RAISE(ABORT, 'destination refused'); END")
    summary = run(ws)
    assert summary.line() == "Committed: 0 Failed: 1 Skipped: 2 New: 1 Reclaimed: 0 Retried: 0"
    row = ws.audit().rows(state="FAILED")[0]
    assert row.error_kind == "transient" and "destination refused" in row.last_error
    with sqlite3.connect(ws.dest_path) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert run(ws).line() == "Committed: 1 Failed: 0 Skipped: 2 New: 0 Reclaimed: 0 Retried: 1"
    assert len(ws.dest_rows()) == 6
    assert ws.audit().get("orders", row.file_hash).attempts == 2


def test_transient_errors_stop_at_retry_cap(ws: Workspace) -> None:
    ws.configure(retry_cap=2)
    ws.add("a.csv", orders_csv(1))
    run(ws)
    ws.add("b.csv", orders_csv(1, start=5))
    with sqlite3.connect(ws.dest_path) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON orders BEGIN SELECT RAISE(ABORT, 'no'); END")
    assert run(ws).failed == 1
    assert run(ws).line() == "Committed: 0 Failed: 1 Skipped: 1 New: 0 Reclaimed: 0 Retried: 1"
    third = run(ws)
    assert third.line() == "Committed: 0 Failed: 0 Skipped: 2 New: 0 Reclaimed: 0 Retried: 0"
    assert any("FAILED after 2 attempt(s)" in w for w in third.warnings)


def test_unreachable_destination_claims_nothing(ws: Workspace) -> None:
    ws.configure(connector={"type": "sqlite", "url": "sqlite:///missing-dir/orders.db"})
    ws.add("a.csv", orders_csv(1))
    with pytest.raises(DatabaseUnavailable):
        run(ws)
    row = ws.audit().rows()[0]
    assert (row.state, row.attempts) == ("PENDING", 0)


def test_incompatible_table_is_a_config_error_and_claims_nothing(ws: Workspace) -> None:
    with sqlite3.connect(ws.dest_path) as conn:
        conn.execute("CREATE TABLE orders (x TEXT)")
    ws.add("a.csv", orders_csv(1))
    with pytest.raises(ConfigError):
        run(ws)
    assert ws.audit().rows()[0].attempts == 0


def test_missing_directory_is_a_config_error(ws: Workspace) -> None:
    audit = ws.audit()
    with pytest.raises(ConfigError, match="no such directory"):
        run_pipeline(ws.config(), ws.root / "nope", audit)


def test_requeued_data_error_loads_after_fix(ws: Workspace) -> None:
    ws.add("a.csv", "order_id,amount\n1,x\n")
    run(ws)
    # The fix: amount is text after all. The existing REAL column cannot hold that as written,
    # so the pipeline (same name) now loads into a new table.
    ws.configure(name="orders", dest_table="orders_text",
                 columns=[{"source": "order_id"}, {"source": "amount", "type": "string"}])
    audit = ws.audit()
    assert audit.requeue(None) == 1
    assert run(ws).line() == "Committed: 1 Failed: 0 Skipped: 0 New: 0 Reclaimed: 0 Retried: 0"
    assert ws.dest_rows("orders_text")[0][:2] == ("1", "x")


def test_stat_cache_skips_rehashing_unchanged_files(ws: Workspace, monkeypatch) -> None:
    import os
    import time

    import filedge_core.runner as runner_module

    monkeypatch.setattr(runner_module, "STAT_CACHE_SETTLE_NS", 500_000_000)
    old = time.time() - 60
    for i in range(3):
        path = ws.add(f"f{i}.csv", orders_csv(2, start=10 * i))
        os.utime(path, (old, old))
    time.sleep(0.6)  # let the files settle
    hashed: list[str] = []
    real = runner_module.hash_file
    monkeypatch.setattr(runner_module, "hash_file", lambda p: hashed.append(str(p)) or real(p))
    assert run(ws).committed == 3 and len(hashed) == 3
    assert run(ws).skipped == 3 and len(hashed) == 3, "unchanged files are not hashed again"
    # Same size and mtime but new bytes: the ctime moved, so the file is hashed again.
    target = ws.incoming / "f1.csv"
    text = target.read_text().replace("10.50", "99.50")
    target.write_text(text)
    os.utime(target, (old, old))
    time.sleep(0.6)
    summary = run(ws)
    assert len(hashed) == 4 and (summary.new, summary.committed) == (1, 1)
    # A file changed moments ago is hashed on every run until it settles.
    ws.add("new.csv", orders_csv(1, start=500))
    run(ws)
    run(ws)
    assert hashed.count(str(ws.incoming / "new.csv")) == 2


def test_a_file_whose_audit_row_was_deleted_by_hand_is_loaded_again(ws: Workspace, monkeypatch) -> None:
    """Its hash is in the stat cache (the file is unchanged), but a cached hash without an audit
    row must not be skipped as COMMITTED: deleting the row forgets the cache entry."""
    import os
    import time

    import filedge_core.runner as runner_module

    monkeypatch.setattr(runner_module, "STAT_CACHE_SETTLE_NS", 300_000_000)
    old = time.time() - 60
    for i in range(2):
        os.utime(ws.add(f"f{i}.csv", orders_csv(2, start=10 * i)), (old, old))
    time.sleep(0.4)  # settled: the first run caches both hashes
    assert run(ws).committed == 2
    assert run(ws).skipped == 2
    gone = hash_file(ws.incoming / "f1.csv")
    audit_db = ws.audit_url.removeprefix("sqlite:///")
    with sqlite3.connect(audit_db) as dba:  # what an operator would type in sqlite3
        dba.execute("DELETE FROM etl_file_audit WHERE file_hash = ?", (gone,))
    summary = run(ws)
    assert (summary.new, summary.committed, summary.skipped) == (1, 1, 1)
    assert ws.rows_per_hash()[gone] == 2


def test_a_renamed_file_is_loaded_from_where_it_is_now(ws: Workspace) -> None:
    from filedge_core.runner import plan_run, process_file

    old = ws.add("a.csv", orders_csv(2))
    config, audit = ws.config(), ws.audit()
    file_hash = hash_file(old)
    audit.register(config.name, file_hash, str(old), old.stat().st_size, config.config_hash)
    new = old.rename(ws.incoming / "renamed.csv")
    plan = plan_run(config, ws.incoming, audit)  # what the Dagster sensor runs
    assert [item.path for item in plan.items] == [str(new)]
    assert audit.get(config.name, file_hash).path == str(new)
    connector = open_connector(config)
    connector.prepare()
    assert process_file(config, file_hash, audit, connector).outcome == "committed"
    assert len(ws.dest_rows()) == 2


def test_each_attempt_records_the_config_and_destination_it_used(ws: Workspace) -> None:
    ws.add("a.csv", "order_id,amount\n1,abc\n")
    run(ws)
    first = ws.config()
    ws.configure(columns=[{"source": "order_id", "type": "string"}, {"source": "amount", "type": "float"}],
                 csv={"null_values": ["abc"]})
    second = ws.config()
    audit = ws.audit()
    (row,) = audit.rows()
    assert audit.requeue([row.file_hash]) == 1
    assert run(ws).committed == 1
    attempts = audit.attempts("orders", row.file_hash)
    assert [(a.outcome, a.config_hash) for a in attempts] == [
        ("failed", first.config_hash), ("committed", second.config_hash)
    ]
    assert first.config_hash != second.config_hash == audit.get("orders", row.file_hash).config_hash
    assert {(a.dest_table, a.dest_url) for a in attempts} == {("orders", second.connector.url)}
    assert attempts[1].rows_written == 1
