"""`filedge show`'s report on a real SQLite audit: each attempt's line, the destination."""

from __future__ import annotations

import pytest

from filedge_core.audit import AuditStore, ErrorKind
from filedge_core.errors import UsageError
from filedge_core.report import file_report
from tests.support import age_leases

P = "orders"
H = "ab" * 32


def attempt_lines(audit: AuditStore) -> list[str]:
    lines = file_report(audit, H[:6]).lines()
    return lines[lines.index(next(line for line in lines if line.startswith("history:"))) + 1 :]


def test_each_attempt_is_one_line_with_its_outcome(audit: AuditStore) -> None:
    audit.register(P, H, "/in/a.csv", 10, "c" * 64)
    audit.fail(audit.claim(P, H, "host:1", 5, "c" * 64, "orders", "sqlite:////d/o.db"), "down\nhard", ErrorKind.TRANSIENT)
    audit.give_back(audit.claim(P, H, "host:2", 5, "d" * 64, "orders", "sqlite:////d/o.db"), "interrupted")
    audit.claim(P, H, "host:3", 5, "d" * 64, "orders2", "postgresql://u:pw@h/db")
    age_leases(audit)
    audit.reclaim_stale(P, 60, 5)
    audit.claim(P, H, "host:4", 5, "d" * 64, "orders2", "postgresql://u:pw@h/db")
    fields = [line.split("  ")[1:] for line in attempt_lines(audit)]
    assert [f[0] for f in fields] == ["token 1", "token 2", "token 3", "token 4"]
    assert [f[2:4] for f in fields] == [
        ["host:1", "failed (transient)"], ["host:2", "given_back"], ["host:3", "lost"], ["host:4", "running"]
    ]
    assert fields[0][-2:] == [f"config={'c' * 12}", "down\nhard"], "the CLI makes each line one line"
    assert fields[3][4:] == ["-", "rows=-", f"config={'d' * 12}"]
    lines = file_report(audit, H[:6]).lines()
    assert "state:        PROCESSING" in lines and any(line.startswith("lease:        host:4 since ") for line in lines)
    assert (
        f"destination:  table orders2 in postgresql://u:***@h/db, rows where _filedge_file_hash = '{H}'" in lines
    ), "the latest attempt's destination, its password masked"


def test_an_open_attempt_whose_lease_is_gone_is_not_running(audit: AuditStore) -> None:
    """Deleting the audit row and registering it again leaves an attempt open: shown as open."""
    audit.register(P, H, "/in/a.csv", 10, "cfg")
    audit.claim(P, H, "w", 3, "cfg")
    with audit.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE etl_file_audit SET state = 'PENDING'")
    assert attempt_lines(audit)[0].split("  ")[4] == "open"


def test_a_pipeline_of_the_config_must_match(audit: AuditStore, make_config) -> None:
    audit.register(P, H, "/in/a.csv", 10, "cfg")
    config = make_config()
    assert file_report(audit, H[:4], config=config).destination.counted
    with pytest.raises(UsageError, match="the pipeline of --config is 'orders'"):
        file_report(audit, H[:4], "other", config)
