"""What `filedge run` prints: --json, --quiet, the progress display (on a real pseudo-terminal
and in a pipe), and --watch as a long-running service stopped by a signal."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path

import pytest

from filedge_core.scan import hash_file
from tests.acceptance.test_crash import wait_for
from tests.support import Workspace, orders_csv, stop, watching


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_json_summary_lists_every_claimed_file(ws: Workspace) -> None:
    good = hash_file(ws.add("a.csv", orders_csv(2)))
    bad = hash_file(ws.add("b.csv", "order_id,amount\n1,x\n"))
    result = ws.run("--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("committed", "failed", "skipped", "new", "reclaimed", "retried")} == {
        "committed": 1, "failed": 1, "skipped": 0, "new": 2, "reclaimed": 0, "retried": 0
    }
    files = {f["file_hash"]: f for f in data["files"]}
    assert files[good]["outcome"] == "committed" and files[good]["rows_written"] == 2
    assert files[bad]["outcome"] == "failed" and "line 2" in files[bad]["error"]
    assert files[good]["path"].endswith("a.csv") and files[good]["attempts"] == 1


def test_quiet_keeps_errors_and_the_summary_only(ws: Workspace) -> None:
    ws.add("b.csv", "order_id,amount\n1,x\n")
    ws.run()
    loud = ws.run()
    assert "warning:" in loud.stderr and "needs `filedge requeue" in loud.stderr
    quiet = ws.run("--quiet")
    assert quiet.stderr == ""
    assert quiet.stdout == loud.stdout == "Committed: 0 Failed: 0 Skipped: 1 New: 0 Reclaimed: 0 Retried: 0\n"
    ws.add("c.csv", "order_id,amount\n1,y\n")
    fresh = ws.run("-q")
    assert "FAILED" in fresh.stderr and "c.csv" in fresh.stderr, "errors are still shown"


def test_progress_on_a_terminal(ws: Workspace) -> None:
    for n in range(5):
        ws.add(f"f{n}.csv", orders_csv(10, start=100 * n))
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        ws.run_args(), cwd=ws.root, stdout=subprocess.PIPE, stderr=secondary,
        env={**os.environ, "FILEDGE_TEST_PAUSE_AT": "mid_insert:0.05"},
    )
    os.close(secondary)
    out = proc.stdout.read() if proc.stdout else b""
    proc.wait(timeout=60)
    screen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(main)
    text = screen.decode()
    assert out == b"Committed: 5 Failed: 0 Skipped: 0 New: 5 Reclaimed: 0 Retried: 0\n"
    assert "\r" in text, "a live line, redrawn"
    assert "3/5" in text and "loading f3.csv" in text and "rows/s" in text
    assert "50 rows" in text and "5/5" in text


def test_progress_in_a_pipe_is_plain_lines(ws: Workspace) -> None:
    for n in range(3):
        ws.add(f"f{n}.csv", orders_csv(10, start=100 * n))
    result = ws.run(env={"FILEDGE_TEST_PROGRESS_SECONDS": "0"})
    lines = result.stderr.splitlines()
    # every batch read (one per file here) and every file done
    expected = [f"filedge: progress: {k}/3 files" for k in (0, 1, 1, 2, 2, 3)]
    assert [line.split(",")[0] for line in lines] == expected
    assert lines[0].startswith("filedge: progress: 0/3 files, 10 rows,")
    assert lines[0].endswith("loading f0.csv")
    assert "\r" not in result.stderr and "30 rows" in lines[-1]
    assert ws.run(env={"FILEDGE_TEST_PROGRESS_SECONDS": "0"}).stderr == "", "nothing to load: nothing to say"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_progress_in_a_pipe_shows_a_long_file_while_it_loads(ws: Workspace, workers: str) -> None:
    ws.configure(batch_bytes=2048)  # ~190 rows per batch: 6 batches
    ws.add("big.csv", orders_csv(1000))
    env = {"FILEDGE_TEST_PROGRESS_SECONDS": "0", "FILEDGE_TEST_PAUSE_AT": "mid_insert:0.4"}
    result = ws.run("--workers", workers, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    during = [line for line in lines if line.startswith("filedge: progress: 0/1 files, ")]
    rows = [int(line.split(", ")[1].split()[0].replace(",", "")) for line in during]
    assert len(rows) >= 2 and rows == sorted(rows) and 0 < rows[0] < rows[-1] <= 1000, lines
    assert all(line.endswith("loading big.csv") for line in during), lines
    assert lines[-1].startswith("filedge: progress: 1/1 files, 1,000 rows,"), lines


def test_watch_loads_new_files_until_sigterm_then_exits_0(ws: Workspace) -> None:
    first = hash_file(ws.add("a.csv", orders_csv(2)))
    with watching(ws, "--interval", "0.2") as proc:
        wait_for(lambda: ws.audit().counts()["COMMITTED"] == 1)
        time.sleep(1.0)  # idle scans print nothing
        second = hash_file(ws.add("b.csv", orders_csv(3, start=10)))
        wait_for(lambda: ws.audit().counts()["COMMITTED"] == 2)
        started = time.monotonic()
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 5
    assert ws.rows_per_hash() == {first: 2, second: 3}
    assert out.splitlines() == [
        "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0",
        "Committed: 1 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0",
    ]
    assert "Traceback" not in err


def test_watch_announces_a_failed_file_once_and_finishes_its_file_on_stop(ws: Workspace) -> None:
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    with watching(ws, "--interval", "0.1", env={"FILEDGE_TEST_PAUSE_AT": "mid_insert:1.5"}) as proc:
        wait_for(lambda: ws.audit().counts()["FAILED"] == 1)
        time.sleep(1.0)  # several scans meet the FAILED file
        slow = hash_file(ws.add("slow.csv", orders_csv(5)))
        wait_for(lambda: ws.audit().counts()["PROCESSING"] == 1)
        out, err = stop(proc, signal.SIGINT)  # within --grace (30 s): the file finishes
    assert proc.returncode == 0, err
    assert ws.rows_per_hash() == {slow: 5}, (out, err, ws.audit().counts())
    assert err.count("needs `filedge requeue") == 1, err
    assert err.count("FAILED") >= 1 and "Traceback" not in err
    assert out.splitlines()[-1] == "Committed: 1 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0"


def test_watch_waits_for_an_audit_database_that_is_not_there_yet(tmp_path: Path) -> None:
    """A service started before its audit database can be reached keeps trying."""
    ws = Workspace(tmp_path, audit_url=f"sqlite:///{tmp_path / 'later' / 'filedge.db'}")
    file_hash = hash_file(ws.add("a.csv", orders_csv(2)))
    with watching(ws, "--interval", "0.2") as proc:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        (tmp_path / "later").mkdir()
        wait_for(lambda: ws.dest_path.exists() and bool(ws.query(
            "SELECT name FROM sqlite_master WHERE name = 'orders'")) and ws.rows_per_hash().get(file_hash) == 2)
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert "does not exist; trying again at the next scan" in err
    assert err.count("trying again") >= 2 and "Traceback" not in err
    assert out.splitlines() == ["Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0"]


def test_watch_stopped_during_a_long_scan_exits_0(ws: Workspace) -> None:
    """The grace period ends while a big new file is being hashed (not loaded): still a clean
    stop for a service."""
    with open(ws.incoming / "big.csv", "wb") as handle:
        handle.truncate(8 << 30)  # sparse: hashing it takes seconds, storing it nothing
    with watching(ws, "--grace", "0.2") as proc:
        time.sleep(1.5)  # imports done, the scan is hashing
        _, err = stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "error" not in err
