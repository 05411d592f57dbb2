"""The installed ``filedge`` command: help, output formats, exit codes, one-line errors."""

from __future__ import annotations

import json

from filedge_core.cli import main
from filedge_core.dburl import mask
from tests.support import Workspace, filedge, orders_csv

COMMANDS = sorted(main.commands)
NO_AUDIT_ENV = {"FILEDGE_AUDIT_DB_URL": ""}


def test_every_command_has_help() -> None:
    assert COMMANDS == ["list", "prune", "requeue", "run", "show", "status", "validate", "verify"]
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
    assert {r["config_hash"] for r in records} == {ws.config().config_hash}

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


def test_show_a_file_its_attempts_and_where_its_rows_are(ws: Workspace) -> None:
    ws.add("good.csv", orders_csv(2))
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    ws.run()
    config = ws.config()
    rows = {r.path.rsplit("/", 1)[1]: r for r in ws.audit().rows()}
    good, bad = rows["good.csv"].file_hash, rows["bad.csv"].file_hash
    dest_url = mask(config.connector.url)

    shown = filedge("show", good[:8], "--audit-db-url", ws.audit_url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for expected in (
        f"file:         {good}", "pipeline:     orders", f"path:         {ws.incoming / 'good.csv'}",
        "state:        COMMITTED", "attempts:     1", "rows:         2", "rejected:     0", "last_error:   -",
        f"config_hash:  {config.config_hash[:12]}",
        f"destination:  table orders in {dest_url}, rows where _filedge_file_hash = '{good}'",
        "history:      1 attempt(s)",
    ):
        assert expected in lines, (expected, lines)
    attempt = lines[-1].split("  ")
    assert attempt[:2] == ["", "token 1"] and attempt[4:6] == ["committed", attempt[5]] and attempt[5].endswith(" s")
    assert attempt[6:] == ["rows=2", f"config={config.config_hash[:12]}"]
    assert not any(line.startswith("rows there:") for line in lines), "counted only with --config"

    failed = filedge("show", bad, "--audit-db-url", ws.audit_url).stdout
    assert "state:        FAILED (data)" in failed
    assert "failed (data)" in failed.splitlines()[-1]
    assert failed.splitlines()[-1].endswith("row 1 (line 2), column 'amount': 'x' is not a valid float")

    counted = filedge("show", good[:8], "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    assert counted.returncode == 0 and "rows there:   2" in counted.stdout.splitlines()

    data = json.loads(filedge("show", good, "--json", "--config", str(ws.config_path), "--audit-db-url", ws.audit_url).stdout)
    assert (data["file_hash"], data["state"], data["rows_written"], data["config_hash"]) == (
        good, "COMMITTED", 2, config.config_hash
    )
    (entry,) = data["history"]
    assert (entry["claim_token"], entry["outcome"], entry["rows_written"], entry["config_hash"]) == (
        1, "committed", 2, config.config_hash
    )
    assert entry["duration_s"] >= 0 and entry["ended_at"] >= entry["started_at"]
    assert data["destination"] == {
        "table": "orders", "url": dest_url, "hash_column": "_filedge_file_hash", "counted": True, "rows": 2,
        "rejected_table": "orders_rejected", "rejected_rows": None, "error": None,
    }


def test_show_errors_are_one_line(ws: Workspace) -> None:
    audit = ws.audit()
    for file_hash in ("abc1" + "0" * 60, "abc2" + "0" * 60):
        audit.register("orders", file_hash, f"/in/{file_hash[:4]}.csv", 1, "cfg")
    audit.register("other", "abc1" + "0" * 60, "/in/x.csv", 1, "cfg")
    url = ("--audit-db-url", ws.audit_url)
    assert_one_line_error(filedge("show", "abc", *url), 2, "abc", "more than one file")
    assert_one_line_error(filedge("show", "ffff", *url), 2, "ffff", "no file with this hash")
    assert_one_line_error(filedge("show", "xyz", *url), 2, "xyz", "not a hexadecimal")
    assert_one_line_error(filedge("show", "abc1", *url), 2, "abc1", "more than one pipeline (orders, other)")
    assert filedge("show", "abc1", "--pipeline", "other", *url).returncode == 0
    assert_one_line_error(filedge("show", "abc1", "--pipeline", "other", "--config", str(ws.config_path), *url),
                          2, "--pipeline other", "'orders'")
    assert_one_line_error(filedge("show", "abc2", "--pipeline", "other", *url), 2, "abc2", "no file")
    shown = filedge("show", "abc2", *url)
    assert shown.returncode == 0 and "destination:  unknown" in shown.stdout
    assert "history:      none recorded" in shown.stdout


def test_show_never_creates_the_destination_and_says_when_it_cannot_count(ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(1))
    ws.run()
    file_hash = ws.audit().rows()[0].file_hash
    args = ("show", file_hash[:10], "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    ws.dest_path.unlink()
    missing = filedge(*args)
    assert missing.returncode == 0 and "rows there:   no such table" in missing.stdout
    assert not ws.dest_path.exists()
    ws.dest_path.write_bytes(b"not a database" * 100)
    broken = filedge(*args)
    assert broken.returncode == 1, broken.stderr
    assert f"rows there:   not counted: destination sqlite:///{ws.dest_path}: file is not a database" in broken.stdout


def test_show_counts_quarantined_rows_too(ws: Workspace) -> None:
    ws.configure(on_error="quarantine")
    ws.add("some.csv", "order_id,amount\n1,x\n2,2.5\n3,3.5\n")
    assert ws.run().returncode == 0
    shown = filedge("show", ws.audit().rows()[0].file_hash[:9], "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    lines = shown.stdout.splitlines()
    assert "rows there:   2 (and 1 in orders_rejected)" in lines and "rejected:     1" in lines
    assert lines[-1].split("  ")[6:8] == ["rows=2", "rejected=1"]


def test_show_counts_a_row_with_two_bad_values_once_as_the_audit_does(ws: Workspace) -> None:
    ws.configure(on_error="quarantine", columns=[
        {"source": "order_id", "type": "int", "required": True},
        {"source": "amount", "type": "float", "required": True},
    ])
    ws.add("some.csv", "order_id,amount\nx,y\n2,2.5\n")
    assert ws.run().returncode == 0
    assert ws.query("SELECT count(*) FROM orders_rejected") == [(2,)], "one record per bad value"
    shown = filedge("show", ws.audit().rows()[0].file_hash[:9], "--config", str(ws.config_path), "--audit-db-url", ws.audit_url)
    lines = shown.stdout.splitlines()
    assert "rows there:   1 (and 1 in orders_rejected)" in lines and "rejected:     1" in lines


def test_prune_deletes_history_never_the_audit_row(ws: Workspace) -> None:
    ws.add("good.csv", orders_csv(2))
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    ws.run()
    url = ("--audit-db-url", ws.audit_url)
    dry = filedge("prune", "--older-than", "0", "--dry-run", *url)
    assert dry.returncode == 0 and dry.stdout == "Would prune: 2 attempt(s)\n"
    assert filedge("prune", "--older-than", "1", *url).stdout == "Pruned: 0 attempt(s)\n"
    assert filedge("prune", "--older-than", "0", "--pipeline", "other", *url).stdout == "Pruned: 0 attempt(s)\n"
    assert filedge("prune", "--older-than", "0", *url).stdout == "Pruned: 2 attempt(s)\n"
    audit = ws.audit()
    assert audit.counts() == {"PENDING": 0, "PROCESSING": 0, "COMMITTED": 1, "FAILED": 1}
    assert all(audit.attempts(r.pipeline, r.file_hash) == [] for r in audit.rows())
    # The audit row is what keeps a committed file from loading again: the next run skips it.
    again = ws.run()
    assert again.stdout == "Committed: 0 Failed: 0 Skipped: 2 New: 0 Reclaimed: 0 Retried: 0\n", again.stderr
    assert len(ws.dest_rows()) == 2
    negative = filedge("prune", "--older-than", "-1", *url)
    assert negative.returncode == 2 and "'--older-than': -1.0 is not in the range x>=0" in negative.stderr
    assert_one_line_error(filedge("prune", "--older-than", "nan", *url), 2, "--older-than")
    assert filedge("prune", *url).returncode == 2


def test_a_ctrl_c_while_the_command_loads_is_one_line_not_a_traceback() -> None:
    """The installed command starts at filedge_core.entry, which catches a KeyboardInterrupt
    raised while the CLI's modules are imported (here: made to happen at `import click`)."""
    import subprocess
    import sys

    from tests.support import FILEDGE, ROOT

    assert "from filedge_core.entry import main" in open(FILEDGE).read()
    program = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'click':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from filedge_core.entry import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", program, "status"], capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stderr, done.stdout) == (130, "filedge: error: interrupted\n", "")
