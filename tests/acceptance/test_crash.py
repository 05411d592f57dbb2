"""Crash safety with real ``filedge run`` processes: os._exit at each step boundary, SIGKILL,
a heartbeat that outlives the stale timeout, and a file that kills its worker every time."""

from __future__ import annotations

import signal
import time

import pytest

from filedge_core.faults import CRASH_EXIT_CODE, STEPS
from filedge_core.scan import hash_file
from tests.support import Workspace, filedge, orders_csv

FILES = {"a.csv": 3, "b.csv": 5, "c.csv": 2}


def add_files(ws: Workspace) -> dict[str, int]:
    expected = {}
    start = 1
    for name, n in FILES.items():
        path = ws.add(name, orders_csv(n, start=start))
        expected[hash_file(path)] = n
        start += 100
    return expected


def assert_exactly_once(ws: Workspace, expected: dict[str, int]) -> None:
    assert ws.rows_per_hash() == expected
    audit = ws.audit()
    assert audit.counts() == {"PENDING": 0, "PROCESSING": 0, "COMMITTED": len(expected), "FAILED": 0}
    for row in audit.rows():
        assert row.rows_written == expected[row.file_hash]
    assert ws.ledger() == expected


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_then_recover(ws: Workspace, step: str) -> None:
    expected = add_files(ws)
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": step})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    counts = ws.audit().counts()
    if step == "after_audit_commit":
        assert counts["COMMITTED"] == 1 and counts["PROCESSING"] == 0
    else:
        assert counts["PROCESSING"] == 1 and counts["COMMITTED"] == 0
    rows_after_crash = sum(ws.rows_per_hash().values())
    if step in ("after_claim", "mid_insert"):
        assert rows_after_crash == 0, "nothing of an uncommitted destination transaction is visible"

    # A fresh lease is respected: an immediate rerun does not steal it.
    rerun = ws.run()
    assert rerun.returncode == 0, rerun.stderr
    assert "Reclaimed: 0" in rerun.stdout
    still = ws.audit().counts()
    if step == "after_audit_commit":
        assert still["COMMITTED"] == 3 and still["PROCESSING"] == 0
    else:
        assert still["COMMITTED"] == 2 and still["PROCESSING"] == 1

    ws.age_leases()
    final = ws.run()
    assert final.returncode == 0, final.stderr
    reclaimed = 0 if step == "after_audit_commit" else 1
    if step == "after_audit_commit":
        assert final.stdout.strip() == "Committed: 0 Failed: 0 Skipped: 3 New: 0 Reclaimed: 0 Retried: 0"
    else:
        assert final.stdout.strip() == f"Committed: 1 Failed: 0 Skipped: 2 New: 0 Reclaimed: {reclaimed} Retried: 0"
    assert_exactly_once(ws, expected)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_sigkill_mid_insert(ws: Workspace) -> None:
    """A worker SIGKILLed inside its destination transaction leaves no rows and a stale lease."""
    expected = add_files(ws)
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:60"})
    wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
    time.sleep(0.5)  # inside the 60 s pause: the first batch inserted but not committed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert sum(ws.rows_per_hash().values()) == 0
    ws.age_leases()
    final = ws.run()
    assert final.stdout.strip() == "Committed: 3 Failed: 0 Skipped: 0 New: 0 Reclaimed: 1 Retried: 0", final.stderr
    assert_exactly_once(ws, expected)


def test_heartbeat_keeps_a_slow_file_alive(ws: Workspace) -> None:
    """A live worker slower than the stale timeout keeps its lease; a second run does not steal it."""
    ws.configure(stale_timeout_minutes=0.02)  # 1.2 s, renewed every 0.3 s
    ws.add("slow.csv", orders_csv(10))
    slow = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "after_claim:4"})
    wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
    time.sleep(2.5)  # well past the timeout
    other = ws.run()
    assert other.stdout.strip() == "Committed: 0 Failed: 0 Skipped: 1 New: 0 Reclaimed: 0 Retried: 0", other.stderr
    out, err = slow.communicate(timeout=30)
    assert slow.returncode == 0, err
    assert out.strip() == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"
    assert len(ws.dest_rows()) == 10


def test_without_heartbeat_the_lease_would_go_stale(ws: Workspace) -> None:
    """The control for the test above: a SIGSTOPped worker stops renewing and is reclaimed."""
    ws.configure(stale_timeout_minutes=0.02)
    ws.add("a.csv", orders_csv(10))
    stuck = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "after_claim:4"})
    wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
    stuck.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.0)
        other = ws.run()
        assert other.stdout.strip() == "Committed: 1 Failed: 0 Skipped: 0 New: 0 Reclaimed: 1 Retried: 0", other.stderr
    finally:
        stuck.send_signal(signal.SIGCONT)
    out, err = stuck.communicate(timeout=30)
    # The zombie's write is refused by the ledger's token check; the rows stay exactly once.
    # Fenced: by its own heartbeat finding the lease gone, or by the ledger refusing its write.
    assert "Committed: 0" in out and ("lease lost while the file was read" in err or "write refused" in err), (out, err)
    assert len(ws.dest_rows()) == 10
    audit = ws.audit()
    assert audit.counts()["COMMITTED"] == 1
    # The history tells it: the first attempt was reclaimed, its worker came back and was fenced.
    attempts = audit.attempts("orders", audit.rows()[0].file_hash)
    assert [(a.claim_token, a.outcome) for a in attempts] == [(1, "fenced"), (2, "committed")]


def test_file_that_kills_its_worker_ends_failed(ws: Workspace) -> None:
    ws.configure(retry_cap=2)
    ws.add("poison.csv", orders_csv(1))
    for _ in range(2):
        assert ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_claim"}).returncode == CRASH_EXIT_CODE
        ws.age_leases()
    final = ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_claim"})
    assert final.returncode == 1
    assert final.stdout.strip() == "Committed: 0 Failed: 1 Skipped: 0 New: 0 Reclaimed: 0 Retried: 0"
    audit = ws.audit()
    row = audit.rows()[0]
    assert (row.state, row.attempts, row.last_error) == ("FAILED", 2, "worker lost 2 times")
    assert [(a.claim_token, a.outcome) for a in audit.attempts("orders", row.file_hash)] == [(1, "lost"), (2, "lost")]


def test_a_file_deleted_from_the_audit_by_hand_is_loaded_again_once(ws: Workspace) -> None:
    """Its new audit row's tokens start over below the ledger's: the first write is refused as
    fenced, the row is found still ours (so younger than the ledger), its token is raised and
    the file loaded in the same run, not left PROCESSING until reclaims catch up."""
    import sqlalchemy as sa

    file_hash = hash_file(ws.add("a.csv", orders_csv(3)))
    assert ws.run(env={"FILEDGE_TEST_CRASH_AT": "mid_insert"}).returncode == CRASH_EXIT_CODE
    ws.age_leases()
    assert ws.run().returncode == 0  # loaded under claim token 2
    audit = ws.audit()
    with audit.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM etl_file_audit WHERE file_hash = :h"), {"h": file_hash})
    again = ws.run()
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"
    assert ws.rows_per_hash() == {file_hash: 3}
    row = audit.get("orders", file_hash)
    assert (row.state, row.attempts, row.claim_token) == ("COMMITTED", 1, 3)
    # token 1 is the new row's refused write (it replaced the old row's attempt 1); 2 is the old load
    assert [(a.claim_token, a.outcome) for a in audit.attempts("orders", file_hash)] == [
        (1, "given_back"), (2, "committed"), (3, "committed")
    ]
    audit.dispose()
    verified = filedge("verify", "--config", str(ws.config_path), "--audit-db-url", ws.audit_url, cwd=ws.root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
