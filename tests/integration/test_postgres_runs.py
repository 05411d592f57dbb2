"""``filedge run`` on PostgreSQL: the crash tests, the walkthrough's sequence on mixed back ends,
and many concurrent workers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from filedge_core.scan import hash_file
from tests.acceptance import test_cli, test_crash
from tests.proxy import Proxy
from tests.support import Workspace, orders_csv, stop, watching

pytestmark = pytest.mark.postgres

# The crash suite of tests/acceptance/test_crash.py, with the audit table and the destination on
# PostgreSQL (the `ws` fixture below replaces the SQLite one).
test_crash_at_each_step_then_recover = test_crash.test_crash_at_each_step_then_recover
test_sigkill_mid_insert = test_crash.test_sigkill_mid_insert
test_heartbeat_keeps_a_slow_file_alive = test_crash.test_heartbeat_keeps_a_slow_file_alive
test_without_heartbeat_the_lease_would_go_stale = test_crash.test_without_heartbeat_the_lease_would_go_stale
test_file_that_kills_its_worker_ends_failed = test_crash.test_file_that_kills_its_worker_ends_failed
test_a_file_deleted_from_the_audit_by_hand_is_loaded_again_once = (
    test_crash.test_a_file_deleted_from_the_audit_by_hand_is_loaded_again_once
)
# `filedge show` and `filedge prune` with the audit table and the destination on PostgreSQL.
test_show_a_file_its_attempts_and_where_its_rows_are = test_cli.test_show_a_file_its_attempts_and_where_its_rows_are
test_show_counts_quarantined_rows_too = test_cli.test_show_counts_quarantined_rows_too
test_show_counts_a_row_with_two_bad_values_once_as_the_audit_does = (
    test_cli.test_show_counts_a_row_with_two_bad_values_once_as_the_audit_does
)
test_show_errors_are_one_line = test_cli.test_show_errors_are_one_line
test_prune_deletes_history_never_the_audit_row = test_cli.test_prune_deletes_history_never_the_audit_row


@pytest.fixture
def ws(tmp_path: Path, pg_database: str) -> Workspace:
    return Workspace(tmp_path, audit_url=pg_database, dest_url=pg_database)


def simulate_crash(ws: Workspace) -> None:
    """The walkthrough's step 3, on whichever database holds the audit table."""
    audit = ws.audit()
    try:
        import sqlalchemy as sa

        stale = "2000-01-01T00:00:00+00:00"
        value = ":ts" if audit.backend == "sqlite" else "CAST(:ts AS timestamptz)"
        with audit.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE etl_file_audit SET state='PROCESSING', claimed_at={value} WHERE state='COMMITTED'"), {"ts": stale})
    finally:
        audit.dispose()


def status(ws: Workspace) -> list[str]:
    from tests.support import filedge

    return filedge("status", "--audit-db-url", ws.audit_url).stdout.splitlines()


@pytest.mark.parametrize("layout", ["sqlite-audit+pg-dest", "pg-audit+sqlite-dest", "pg-audit+pg-dest"])
def test_walkthrough_sequence_on_mixed_backends(tmp_path: Path, pg_database: str, layout: str) -> None:
    audit_url = None if layout.startswith("sqlite-audit") else pg_database
    dest_url = None if layout.endswith("sqlite-dest") else pg_database
    ws = Workspace(tmp_path, audit_url=audit_url, dest_url=dest_url)
    ws.add("orders.csv", "order_id,amount\n1001,49.99\n1002,149.00\n")
    assert ws.run().stdout == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0\n"
    simulate_crash(ws)
    assert status(ws) == ["PENDING: 0", "PROCESSING: 1", "COMMITTED: 0", "FAILED: 0"]
    assert ws.run().stdout == "Committed: 1 Failed: 0 Skipped: 0 New: 0 Reclaimed: 1 Retried: 0\n"
    assert len(ws.dest_rows()) == 2
    assert status(ws) == ["PENDING: 0", "PROCESSING: 0", "COMMITTED: 1", "FAILED: 0"]
    assert ws.run().stdout == "Committed: 0 Failed: 0 Skipped: 1 New: 0 Reclaimed: 0 Retried: 0\n"
    assert len(ws.dest_rows()) == 2


def make_files(ws: Workspace, files: int, rows: int) -> set[str]:
    hashes = set()
    for f in range(files):
        lines = ["order_id,amount"] + [f"{f}-{r},{r}.25" for r in range(rows)]
        hashes.add(hash_file(ws.add(f"f{f:04d}.csv", "\n".join(lines) + "\n")))
    return hashes


def parse_summary(line: str) -> dict[str, int]:
    parts = line.split()
    return {parts[i].rstrip(":"): int(parts[i + 1]) for i in range(0, len(parts), 2)}


def test_four_concurrent_processes_200_files(ws: Workspace) -> None:
    """4 separate `filedge run` processes (as on 4 machines) x 200 files x 500 rows."""
    hashes = make_files(ws, 200, 500)
    procs = [ws.popen_run() for _ in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    summaries = [parse_summary(out.strip()) for out, _ in outputs]
    assert sum(s["Committed"] for s in summaries) == 200
    assert sum(s["Failed"] for s in summaries) == 0
    assert sum(s["New"] for s in summaries) == 200
    audit = ws.audit()
    assert audit.counts() == {"PENDING": 0, "PROCESSING": 0, "COMMITTED": 200, "FAILED": 0}
    assert all(row.attempts == 1 for row in audit.rows())
    assert ws.rows_per_hash() == {h: 500 for h in hashes}
    assert ws.ledger() == {h: 500 for h in hashes}
    for row in audit.rows():  # the history agrees with the audit row: one attempt, by its holder
        assert [(a.claim_token, a.worker, a.outcome, a.rows_written) for a in audit.attempts("orders", row.file_hash)] == [
            (1, row.claimed_by, "committed", 500)
        ]


def test_workers_option_shares_the_audit_table(ws: Workspace) -> None:
    hashes = make_files(ws, 60, 100)
    # Each file takes 0.15 s or more, so that one worker alone would need 9 s: on a loaded
    # machine the first worker must not finish everything before the others have started.
    result = ws.run("--workers", "4", env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:0.15"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Committed: 60 Failed: 0 Skipped: 0 New: 60 Reclaimed: 0 Retried: 0\n"
    assert ws.rows_per_hash() == {h: 100 for h in hashes}
    claimers = {row.claimed_by for row in ws.audit().rows()}
    assert len(claimers) > 1, "the work was shared between processes"


def test_zombie_stopped_mid_write_is_fenced(ws: Workspace) -> None:
    """A is SIGSTOPped inside its COPY; B reclaims and commits; A resumes and is refused."""
    import signal

    path = ws.add("a.csv", orders_csv(2000))
    file_hash = hash_file(path)
    zombie = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:2"})
    test_crash.wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
    time.sleep(0.5)  # A is inside its destination transaction, rows sent but not committed
    zombie.send_signal(signal.SIGSTOP)
    try:
        ws.age_leases()
        b = ws.run(timeout=60)
        assert b.stdout == "Committed: 1 Failed: 0 Skipped: 0 New: 0 Reclaimed: 1 Retried: 0\n", b.stderr
        row = ws.audit().get("orders", file_hash)
        assert (row.state, row.claim_token) == ("COMMITTED", 2)
        assert ws.rows_per_hash() == {file_hash: 2000}
    finally:
        zombie.send_signal(signal.SIGCONT)
    out, err = zombie.communicate(timeout=60)
    assert zombie.returncode == 0, err
    assert out == "Committed: 0 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0\n"
    assert "write refused: claim token 1 is older than 2" in err
    row = ws.audit().get("orders", file_hash)
    assert (row.state, row.claim_token, row.rows_written) == ("COMMITTED", 2, 2000), "A's audit update changed nothing"
    attempts = ws.audit().attempts("orders", file_hash)
    assert [(a.claim_token, a.outcome) for a in attempts] == [(1, "fenced"), (2, "committed")]
    assert "write refused: claim token 1 is older than 2" in attempts[0].error
    assert ws.rows_per_hash() == {file_hash: 2000}
    assert ws.ledger() == {file_hash: 2000}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_connection_failures_are_one_line_and_masked(ws: Workspace, pg_database: str) -> None:
    from tests.support import filedge

    host = pg_database.split("@", 1)[1].rsplit("/", 1)[0]
    unknown_db = f"postgresql://postgres:hunter2@{host}/no_such_database"
    result = filedge("status", "--audit-db-url", unknown_db)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "no_such_database" in line and "hunter2" not in line and "***" in line

    closed = "postgresql://postgres:hunter2@127.0.0.1:1/db"
    line = one_line_error(filedge("status", "--audit-db-url", closed))
    assert "hunter2" not in line and "127.0.0.1" in line

    # The destination is down before anything is claimed: exit 1, no file charged.
    ws.configure(connector={"type": "postgresql", "url": unknown_db})
    ws.add("a.csv", orders_csv(3))
    result = ws.run()
    assert result.returncode == 1 and "hunter2" not in result.stderr
    assert "no_such_database" in one_line_error(result)
    row = ws.audit().rows()[0]
    assert (row.state, row.attempts) == ("PENDING", 0)


def test_destination_lost_mid_write_costs_no_data(ws: Workspace, pg_database: str) -> None:
    """The server drops the writer's connection inside its COPY: the file is retried next run."""
    import psycopg

    from tests.support import libpq_url

    path = ws.add("a.csv", orders_csv(1000))
    ws.add("b.csv", orders_csv(10, start=5000))
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:3"})
    test_crash.wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
    time.sleep(0.5)
    with psycopg.connect(libpq_url(pg_database), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'filedge' AND datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed, "the writer's session was found"
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "Failed: 1" in out and "Traceback" not in err
    first = hash_file(path)
    row = ws.audit().get("orders", first)
    assert (row.state, row.error_kind) == ("FAILED", "transient")
    assert first not in ws.rows_per_hash()
    again = ws.run()
    assert again.returncode == 0, again.stderr
    assert "Retried: 1" in again.stdout
    assert ws.rows_per_hash()[first] == 1000


def _behind_proxy(ws: Workspace, pg_database: str, patience: float) -> Proxy:
    """Point the destination (not the audit) at a proxy in front of the test server."""
    address = urlsplit(pg_database)
    proxy = Proxy((address.hostname or "127.0.0.1", address.port or 5432))
    dest = urlunsplit(address._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    ws.configure(connector={"type": "postgresql", "url": dest, "connect_retry_seconds": patience})
    return proxy


def test_unreachable_destination_stops_the_run_and_charges_no_waiting_file(
    ws: Workspace, pg_database: str
) -> None:
    """The destination goes away mid-run and stays away: the file being written fails (its
    attempt is charged); the next file cannot connect, so its lease is given back uncharged and
    the run stops instead of failing every file left. When the destination is back, the next
    run loads everything once."""
    proxy = _behind_proxy(ws, pg_database, patience=1.0)
    try:
        names = ["a.csv", "b.csv", "c.csv", "d.csv"]
        hashes = [hash_file(ws.add(name, orders_csv(100, start=1000 * i))) for i, name in enumerate(names)]
        proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:2"})
        test_crash.wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
        time.sleep(0.3)
        proxy.refuse()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (out, err)
        assert out == "Committed: 0 Failed: 1 Skipped: 3 New: 4 Reclaimed: 0 Retried: 0\n", err
        assert "the destination is unreachable: stopping; 2 file(s) left for the next run" in err
        assert "Traceback" not in err
        rows = ws.audit().rows_for("orders", hashes)
        assert (rows[hashes[0]].state, rows[hashes[0]].attempts, rows[hashes[0]].error_kind) == ("FAILED", 1, "transient")
        assert (rows[hashes[1]].state, rows[hashes[1]].attempts) == ("PENDING", 0)
        assert "the lease was given back" in rows[hashes[1]].last_error
        assert [(rows[h].state, rows[h].attempts) for h in hashes[2:]] == [("PENDING", 0)] * 2

        proxy.accept()
        again = ws.run()
        assert again.returncode == 0, again.stderr
        assert again.stdout == "Committed: 4 Failed: 0 Skipped: 0 New: 0 Reclaimed: 0 Retried: 1\n"
        assert ws.rows_per_hash() == {h: 100 for h in hashes}
    finally:
        proxy.close()


def test_a_destination_back_within_connect_retry_seconds_is_waited_for(ws: Workspace, pg_database: str) -> None:
    """The destination refuses connections for about a second: the run waits and loads every
    file; only the file whose connection was cut mid-write fails (and is retried next run)."""
    proxy = _behind_proxy(ws, pg_database, patience=30)
    try:
        hashes = [hash_file(ws.add(f"{n}.csv", orders_csv(50, start=100 * n))) for n in range(3)]
        proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:1"})
        test_crash.wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
        proxy.refuse()
        time.sleep(1.5)
        proxy.accept()
        out, err = proc.communicate(timeout=60)
        assert out == "Committed: 2 Failed: 1 Skipped: 0 New: 3 Reclaimed: 0 Retried: 0\n", err
        assert sorted(ws.rows_per_hash().values()) == [50, 50]
        assert ws.run().stdout == "Committed: 1 Failed: 0 Skipped: 2 New: 0 Reclaimed: 0 Retried: 1\n"
        assert ws.rows_per_hash() == {h: 50 for h in hashes}
    finally:
        proxy.close()


def test_watch_rides_out_the_audit_database_going_away(tmp_path: Path, pg_database: str) -> None:
    """`filedge run --watch` as a service: the audit database refuses connections for a few
    seconds; each scan meanwhile is a one-line warning, and loading resumes when it is back."""
    address = urlsplit(pg_database)
    proxy = Proxy((address.hostname or "127.0.0.1", address.port or 5432))
    try:
        audit_url = urlunsplit(address._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
        ws = Workspace(tmp_path, audit_url=audit_url, dest_url=pg_database)
        first = hash_file(ws.add("a.csv", orders_csv(2)))
        with watching(ws, "--interval", "0.2") as proc:
            test_crash.wait_for(lambda: ws.audit().counts()["COMMITTED"] == 1)
            proxy.refuse()
            time.sleep(4)
            second = hash_file(ws.add("b.csv", orders_csv(3, start=10)))
            proxy.accept()
            test_crash.wait_for(lambda: ws.audit().counts()["COMMITTED"] == 2)
            out, err = stop(proc)
        assert proc.returncode == 0, err
        assert "trying again at the next scan" in err and "Traceback" not in err
        assert out.splitlines()[-1] == "Committed: 1 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0"
        assert ws.rows_per_hash() == {first: 2, second: 3}
    finally:
        proxy.close()


def test_a_connection_the_server_closed_between_files_charges_no_file(ws: Workspace, pg_database: str) -> None:
    """The server ends the writer's idle session after a.csv (a restart, an idle timeout,
    pg_terminate_backend): b.csv gets a new connection instead of failing with the dead one."""
    import psycopg

    from tests.support import libpq_url

    first = hash_file(ws.add("a.csv", orders_csv(5)))
    second = hash_file(ws.add("b.csv", orders_csv(5, start=100)))
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "after_audit_commit:2"})
    test_crash.wait_for(lambda: ws.audit().counts()["COMMITTED"] == 1)
    with psycopg.connect(libpq_url(pg_database), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'filedge' AND datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed
    out, err = proc.communicate(timeout=60)
    assert out == "Committed: 2 Failed: 0 Skipped: 0 New: 2 Reclaimed: 0 Retried: 0\n", err
    assert ws.rows_per_hash() == {first: 5, second: 5}
    assert {row.attempts for row in ws.audit().rows()} == {1}


def test_decimal_into_numeric(ws: Workspace) -> None:
    from decimal import Decimal

    ws.configure(dest_table="sales.orders",
                 columns=[{"source": "order_id"}, {"source": "amount", "type": "decimal", "precision": 12, "scale": 2}])
    ws.add("a.csv", "order_id,amount\n1,12.3\n2,0.10\n")
    result = ws.run()
    assert result.returncode == 0, result.stderr
    assert ws.query("SELECT order_id, amount FROM sales.orders ORDER BY 1") == [("1", Decimal("12.30")), ("2", Decimal("0.10"))]
    assert ws.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'sales.orders'::regclass AND attname = 'amount'") == [("numeric(12,2)",)]
