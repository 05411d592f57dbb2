"""``filedge verify`` on PostgreSQL: every test of tests/unit/test_verify.py again, with the
audit table and the destination in a fresh PostgreSQL database (``make_ws`` overridden)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_verify import *  # the tests, collected again here
from tests.unit.test_verify import MakeWs, load, workspace

# A SQLite-only concern (a URL to a file that does not exist), tested once there.
del test_no_audit_table_is_a_usage_error_and_creates_nothing  # noqa: F821


@pytest.fixture
def make_ws(tmp_path: Path, pg_database: str) -> MakeWs:
    return lambda mode: workspace(tmp_path, mode, pg_database)


def test_these_tests_run_on_postgresql(make_ws: MakeWs) -> None:
    ws = make_ws("append")
    assert ws.audit_url.startswith("postgresql") and ws.dest_url.startswith("postgresql")
    load(ws)
    assert not ws.dest_path.exists() and len(ws.ledger()) == 3
