"""``after_commit: keep | delete | move: DIR`` with the real command: cleanup only after the
audit commit, only of the committed bytes, and a crash in between is finished by the next run."""

from __future__ import annotations

from pathlib import Path

import pytest

from filedge_core.faults import CRASH_EXIT_CODE
from filedge_core.scan import hash_file
from tests.acceptance.test_crash import wait_for
from tests.support import Workspace, filedge, orders_csv, write_pipeline


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_keep_is_the_default(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(2))
    assert ws.run().returncode == 0
    assert names(ws.incoming) == ["a.csv"]


def test_delete_removes_committed_files_only(ws: Workspace) -> None:
    ws.configure(after_commit="delete")
    good = hash_file(ws.add("a.csv", orders_csv(2)))
    ws.add("b.csv", orders_csv(3, start=10))
    ws.add("bad.csv", "order_id,amount\n1,not a number\n")
    result = ws.run()
    assert result.returncode == 1, result.stderr
    assert result.stdout == "Committed: 2 Failed: 1 Skipped: 0 New: 3 Reclaimed: 0 Retried: 0\n"
    assert names(ws.incoming) == ["bad.csv"], "a FAILED file stays, with its reason in the audit"
    assert ws.rows_per_hash()[good] == 2 and sum(ws.rows_per_hash().values()) == 5


def test_move_into_a_directory_relative_to_the_pipeline_file(ws: Workspace) -> None:
    ws.configure(after_commit={"move": "archive"})
    first = hash_file(ws.add("a.csv", orders_csv(2)))
    assert ws.run().returncode == 0
    archive = ws.root / "archive"
    assert names(ws.incoming) == [] and names(archive) == ["a.csv"]
    listed = filedge("list", "--audit-db-url", ws.audit_url).stdout
    assert str(archive / "a.csv") in listed, "the audit row says where the file is now"

    # The same bytes again, and other bytes under a name the archive already has.
    ws.add("a-copy.csv", orders_csv(2))
    second = hash_file(ws.add("a.csv", orders_csv(4, start=50)))
    result = ws.run()
    assert result.stdout == "Committed: 1 Failed: 0 Skipped: 1 New: 1 Reclaimed: 0 Retried: 0\n", result.stderr
    assert names(ws.incoming) == []
    assert names(archive) == sorted(["a.csv", "a-copy.csv", f"a.{second[:12]}.csv"])
    assert (archive / "a.csv").read_text() == orders_csv(2), "an archived file is never overwritten by other bytes"
    assert ws.rows_per_hash() == {first: 2, second: 4}


def test_a_crash_between_commit_and_cleanup_is_finished_by_the_next_run(ws: Workspace) -> None:
    ws.configure(after_commit="delete")
    file_hash = hash_file(ws.add("a.csv", orders_csv(2)))
    crashed = ws.run(env={"FILEDGE_TEST_CRASH_AT": "after_audit_commit"})
    assert crashed.returncode == CRASH_EXIT_CODE
    assert names(ws.incoming) == ["a.csv"] and ws.audit().get("orders", file_hash).state == "COMMITTED"
    again = ws.run()
    assert again.stdout == "Committed: 0 Failed: 0 Skipped: 1 New: 0 Reclaimed: 0 Retried: 0\n", again.stderr
    assert names(ws.incoming) == [] and ws.rows_per_hash() == {file_hash: 2}


def test_a_file_rewritten_after_it_was_read_is_not_deleted(ws: Workspace) -> None:
    """The producer rewrites the file between the commit and the cleanup: its new bytes are a new
    file, so it stays, and the next run loads it."""
    ws.configure(after_commit="delete")
    path = ws.add("a.csv", orders_csv(2))
    first = hash_file(path)
    proc = ws.popen_run(env={"FILEDGE_TEST_PAUSE_AT": "after_audit_commit:1.5"})
    wait_for(lambda: ws.audit().counts()["COMMITTED"] == 1)
    path.write_text(orders_csv(3, start=100))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "a.csv: not cleaned up (after_commit: delete): changed since it was read" in err
    assert names(ws.incoming) == ["a.csv"]
    assert ws.run().stdout == "Committed: 1 Failed: 0 Skipped: 0 New: 1 Reclaimed: 0 Retried: 0\n"
    assert names(ws.incoming) == []
    assert ws.rows_per_hash() == {first: 2, hash_file_of_text(orders_csv(3, start=100)): 3}


def hash_file_of_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_an_unwritable_archive_is_a_warning_and_the_file_stays(ws: Workspace) -> None:
    (ws.root / "archive").write_text("a file where the directory should be")
    ws.configure(after_commit={"move": "archive"})
    ws.add("a.csv", orders_csv(2))
    result = ws.run()
    assert result.returncode == 0, "the content is committed: cleanup is not the load"
    assert "a.csv: not cleaned up (after_commit: move):" in result.stderr
    assert "Traceback" not in result.stderr
    assert names(ws.incoming) == ["a.csv"]
    # The next run tries again, and says so again.
    assert "not cleaned up" in ws.run().stderr


@pytest.mark.parametrize("value", ["remove", {"move": ""}, {"move": "a", "delete": True}, 3])
def test_bad_after_commit_is_one_line_naming_the_key(ws: Workspace, value: object) -> None:
    write_pipeline(ws.root, after_commit=value, connector=ws.connector)
    result = ws.run()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "after_commit" in lines[0] and "pipeline.yaml" in lines[0], lines


def test_verify_fix_needs_dir_when_files_are_cleaned_up(ws: Workspace) -> None:
    """After a move the recorded path is the archive, which no run scans: a requeue there would
    be a repair that never happens."""
    ws.configure(after_commit={"move": "archive"})
    ws.add("a.csv", orders_csv(3))
    assert ws.run().returncode == 0
    ws.execute("DELETE FROM orders WHERE rowid IN (SELECT rowid FROM orders LIMIT 1)")
    args = ("verify", "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    assert filedge(*args).returncode == 1
    refused = filedge(*args, "--fix")
    assert refused.returncode == 2 and "give --dir DIR" in refused.stderr
    # With --dir and the file put back into it, the repair goes through.
    (ws.root / "archive" / "a.csv").rename(ws.incoming / "a.csv")
    fixed = filedge(*args, "--fix", "--dir", str(ws.incoming))
    assert "repaired: 1" in fixed.stdout, fixed.stdout + fixed.stderr
    assert ws.run().stdout.startswith("Committed: 1 ")
    assert filedge(*args).returncode == 0
