"""The installed ``filedge`` command: help, output formats, exit codes, one-line errors."""

from __future__ import annotations

import json

from filedge_core.cli import main
from tests.support import Workspace, filedge, orders_csv

COMMANDS = sorted(main.commands)
NO_AUDIT_ENV = {"FILEDGE_AUDIT_DB_URL": ""}


def test_every_command_has_help() -> None:
    assert COMMANDS == ["list", "requeue", "run", "status", "validate", "verify"]
    top = filedge("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert name in top.stdout
        result = filedge(name, "--help")
        assert result.returncode == 0 and "Usage: filedge " + name in result.stdout
        assert main.commands[name].help, name


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_config_is_exit_2_and_claims_nothing(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(1))
    ws.config_path.write_text(ws.config_path.read_text().replace("type: float", "type: flaot"))
    result = ws.run()
    assert_one_line_error(result, 2, "pipeline.yaml: columns[1].type: unknown type 'flaot'")
    assert result.stdout == ""


def test_usage_errors_are_exit_2(ws: Workspace) -> None:
    assert filedge("run", "--config", "x.yaml").returncode == 2
    missing = filedge("run", "--dir", str(ws.root / "nope"), "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    assert_one_line_error(missing, 2, "no such directory")
    assert_one_line_error(filedge("requeue", "--audit-db-url", ws.audit_url), 2, "--hash H")
    assert_one_line_error(filedge("status", "--audit-db-url", "mysql://x/y"), 2, "unsupported database URL")


def test_run_exit_codes_and_streams(ws: Workspace) -> None:
    ws.add("good.csv", orders_csv(2))
    ws.add("bad.csv", "order_id,amount\n1,\n")
    result = ws.run()
    assert result.returncode == 1
    assert result.stdout == "Committed: 1 Failed: 1 Skipped: 0 New: 2 Reclaimed: 0 Retried: 0\n"
    assert "FAILED" in result.stderr and "bad.csv" in result.stderr
    assert "row 1 (line 2), column 'amount': required value is missing" in result.stderr
    again = ws.run()
    assert again.returncode == 0, "a file that failed earlier is not a failure of this run"
    assert "filedge requeue --hash" in again.stderr


def test_status_list_requeue(ws: Workspace) -> None:
    ws.add("good.csv", orders_csv(2))
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    ws.run()
    status = filedge("status", "--audit-db-url", ws.audit_url)
    assert status.stdout.splitlines() == ["PENDING: 0", "PROCESSING: 0", "COMMITTED: 1", "FAILED: 1"]
    as_json = json.loads(filedge("status", "--audit-db-url", ws.audit_url, "--json").stdout)
    assert as_json == {"PENDING": 0, "PROCESSING": 0, "COMMITTED": 1, "FAILED": 1}
    other = filedge("status", "--audit-db-url", ws.audit_url, "--pipeline", "nope")
    assert other.stdout.splitlines() == ["PENDING: 0", "PROCESSING: 0", "COMMITTED: 0", "FAILED: 0"]

    listed = filedge("list", "--audit-db-url", ws.audit_url, "--state", "failed").stdout.splitlines()
    assert len(listed) == 1
    short, path, state, attempts, rows, *error = listed[0].split("  ")
    assert len(short) == 12 and path.endswith("bad.csv") and state == "FAILED"
    assert (attempts, rows) == ("attempts=1", "rows=-")
    assert error == ["row 1 (line 2), column 'amount': 'x' is not a valid float"]
    records = [json.loads(line) for line in filedge("list", "--audit-db-url", ws.audit_url, "--json").stdout.splitlines()]
    assert {r["state"] for r in records} == {"COMMITTED", "FAILED"} and all(len(r["file_hash"]) == 64 for r in records)

    committed = [r for r in records if r["state"] == "COMMITTED"][0]["file_hash"]
    touched = filedge("requeue", "--audit-db-url", ws.audit_url, "--hash", committed[:10])
    assert touched.stdout == "Requeued: 0\n" and "not FAILED" in touched.stderr
    requeued = filedge("requeue", "--audit-db-url", ws.audit_url, "--hash", short)
    assert requeued.returncode == 0 and requeued.stdout == "Requeued: 1\n"
    row = [r for r in ws.audit().rows() if r.file_hash.startswith(short)][0]
    assert (row.state, row.attempts) == ("PENDING", 0)
    # Still bad: fails again, then --all requeues it.
    ws.run()
    assert filedge("requeue", "--audit-db-url", ws.audit_url, "--all").stdout == "Requeued: 1\n"
    assert_one_line_error(filedge("requeue", "--audit-db-url", ws.audit_url, "--hash", "ffffff"), 2, "no file with this hash")


def test_audit_url_from_environment(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(2))
    result = filedge("run", "--dir", str(ws.incoming), "--config", str(ws.config_path), cwd=ws.root,
                     env={"FILEDGE_AUDIT_DB_URL": ws.audit_url})
    assert result.returncode == 0, result.stderr
    assert filedge("status", env={"FILEDGE_AUDIT_DB_URL": ws.audit_url}).stdout.startswith("PENDING: 0\nPROCESSING: 0\nCOMMITTED: 1")


def test_default_audit_db_is_filedge_db_in_cwd(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(2))
    result = filedge("run", "--dir", "incoming", "--config", "pipeline.yaml", cwd=ws.root, env=NO_AUDIT_ENV)
    assert result.returncode == 0, result.stderr
    assert (ws.root / "filedge.db").exists()


def test_unreachable_destination_is_one_line_exit_1(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(1))
    ws.configure(connector={"type": "sqlite", "url": "sqlite:///no/such/dir/orders.db"})
    assert_one_line_error(ws.run(), 1, "destination sqlite:///", "does not exist")
    assert ws.audit().rows()[0].attempts == 0


def test_password_is_masked(ws: Workspace) -> None:
    result = filedge("status", "--audit-db-url", "postgresql://user:hunter2@127.0.0.1:1/db")
    assert result.returncode == 1
    assert "hunter2" not in result.stderr and "***" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_validate(ws: Workspace) -> None:
    ok = filedge("validate", "--config", str(ws.config_path))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: pipeline 'orders'")
    ws.config_path.write_text("format: csv\n")
    assert_one_line_error(filedge("validate", "--config", str(ws.config_path)), 2, "required key is missing")


def test_validate_dir_is_a_dry_run(ws: Workspace) -> None:
    ws.add("good.csv", orders_csv(3))
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    result = filedge("validate", "--config", str(ws.config_path), "--dir", str(ws.incoming))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK: pipeline 'orders'")
    assert lines[1:] == ["FAILED bad.csv: row 1 (line 2), column 'amount': 'x' is not a valid float", "OK good.csv 3 rows"]
    assert not (ws.root / "filedge.db").exists() and not ws.dest_path.exists(), "nothing was written"


def test_validate_dir_with_quarantine_counts_rejected_rows(ws: Workspace) -> None:
    ws.configure(on_error="quarantine", max_rejected=1)
    ws.add("good.csv", orders_csv(3))
    ws.add("some.csv", "order_id,amount\n1,x\n2,2.5\n")
    ws.add("many.csv", "order_id,amount\n1,x\n2,y\n3,3.5\n")
    result = filedge("validate", "--config", str(ws.config_path), "--dir", str(ws.incoming))
    assert result.returncode == 1
    assert result.stdout.splitlines()[1:] == [
        "OK good.csv 3 rows",
        "FAILED many.csv: 2 rows rejected so far, more than max_rejected (1); first: "
        "row 1 (line 2), column 'amount': 'x' is not a valid float; row 2 (line 3), column 'amount': 'y' is not a valid float",
        "OK some.csv 1 rows, 1 rejected",
    ]
    assert not (ws.root / "filedge.db").exists() and not ws.dest_path.exists(), "nothing was written"


def test_failed_file_lists_its_row_errors_in_list(ws: Workspace) -> None:
    ws.add("bad.csv", "order_id,amount\n1,x\n2,2.5\n3,\n")
    assert ws.run().returncode == 1
    listed = filedge("list", "--audit-db-url", ws.audit_url)
    assert listed.returncode == 0
    assert (
        "FAILED  attempts=1  rows=-  row 1 (line 2), column 'amount': 'x' is not a valid float; "
        "row 3 (line 4), column 'amount': required value is missing"
    ) in listed.stdout


def test_list_shows_rejected_rows(ws: Workspace) -> None:
    ws.configure(on_error="quarantine")
    ws.add("some.csv", "order_id,amount\n1,x\n2,2.5\n")
    run = ws.run()
    assert run.returncode == 0, run.stderr
    assert "some.csv: 1 row(s) quarantined in orders_rejected" in run.stderr
    listed = filedge("list", "--audit-db-url", ws.audit_url)
    assert "COMMITTED  attempts=1  rows=1  rejected=1" in listed.stdout


def test_an_unforeseen_error_is_one_line_without_traceback(ws: Workspace, tmp_path) -> None:
    """The last line of defence: an exception no code path expected still gives one line, exit 1."""
    from click.testing import CliRunner

    from filedge_core import cli

    @cli.main.command(name="boom")
    @cli.handle_errors
    def boom() -> None:
        raise ValueError("something nobody foresaw")

    try:
        result = CliRunner().invoke(cli.main, ["boom"])
    finally:
        cli.main.commands.pop("boom")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "filedge: error: internal error: ValueError: something nobody foresaw (set FILEDGE_DEBUG=1 for a traceback)"
    )
