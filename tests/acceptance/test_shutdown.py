"""SIGTERM and SIGINT during `filedge run` (real processes): no new claim, the file being loaded
finishes within --grace or gives its lease back uncharged, the summary is printed, exit 143/130."""

from __future__ import annotations

import signal
import time

from tests.acceptance.test_crash import add_files, assert_exactly_once, wait_for
from tests.support import Workspace


def started(ws: Workspace) -> bool:
    return ws.audit().counts()["PROCESSING"] == 1


def test_sigterm_past_the_grace_period_gives_the_lease_back_uncharged(ws: Workspace) -> None:
    expected = add_files(ws)
    proc = ws.popen_run("--grace", "0.5", env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:60"})
    wait_for(lambda: started(ws))
    time.sleep(0.3)  # inside the destination transaction
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - began < 10, "the grace period bounds the stop"
    assert proc.returncode == 143, stderr
    assert stdout.strip() == "Committed: 0 Failed: 0 Skipped: 3 New: 3 Reclaimed: 0 Retried: 0", stderr
    assert "interrupted (the grace period of 0.5 s is over); the lease was given back" in stderr
    assert "stopping: 2 file(s) left for the next run" in stderr
    assert "Traceback" not in stderr
    audit = ws.audit()
    assert audit.counts() == {"PENDING": 3, "PROCESSING": 0, "COMMITTED": 0, "FAILED": 0}
    assert [row.attempts for row in audit.rows()] == [0, 0, 0]  # nothing charged
    assert sum(ws.rows_per_hash().values()) == 0  # the open transaction rolled back

    final = ws.run()  # no stale timeout to wait for: the lease was given back
    assert final.stdout.strip() == "Committed: 3 Failed: 0 Skipped: 0 New: 0 Reclaimed: 0 Retried: 0", final.stderr
    assert_exactly_once(ws, expected)
    assert [row.attempts for row in ws.audit().rows()] == [1, 1, 1]


def test_sigint_lets_the_current_file_finish_then_stops(ws: Workspace) -> None:
    expected = add_files(ws)
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:1.5"})
    wait_for(lambda: started(ws))
    time.sleep(0.3)  # past parsing (polars turns a SIGINT during a query into KeyboardInterrupt)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stdout.strip() == "Committed: 1 Failed: 0 Skipped: 2 New: 3 Reclaimed: 0 Retried: 0", stderr
    assert "Traceback" not in stderr
    assert ws.audit().counts() == {"PENDING": 2, "PROCESSING": 0, "COMMITTED": 1, "FAILED": 0}
    assert ws.run().returncode == 0
    assert_exactly_once(ws, expected)


def test_a_second_signal_stops_at_once(ws: Workspace) -> None:
    add_files(ws)
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:60"})  # default grace: 30 s
    wait_for(lambda: started(ws))
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal waits for the grace period"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - began < 10
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM again); the lease was given back" in stderr
    assert ws.audit().counts()["PENDING"] == 3


def test_workers_stop_together_on_one_signal(ws: Workspace) -> None:
    expected = add_files(ws)
    proc = ws.popen_run("--workers", "2", "--grace", "0.5", env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:60"})
    # One worker holds SQLite's write lock inside its paused transaction; the other waits for it
    # (holding a lease too, or not yet).
    wait_for(lambda: ws.audit().counts()["PROCESSING"] >= 1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # to the parent only: it forwards to its workers
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stdout.strip() == "Committed: 0 Failed: 0 Skipped: 3 New: 3 Reclaimed: 0 Retried: 0", stderr
    assert "Traceback" not in stderr
    audit = ws.audit()
    assert audit.counts() == {"PENDING": 3, "PROCESSING": 0, "COMMITTED": 0, "FAILED": 0}
    assert [row.attempts for row in audit.rows()] == [0, 0, 0]
    assert ws.run().returncode == 0
    assert_exactly_once(ws, expected)
