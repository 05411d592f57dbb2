"""Short fixed-seed fault campaigns (tests/faults/harness.py). Workers are SIGKILLed, SIGSTOPped
past their leases and stopped by SIGTERM or SIGINT while they load; their files are appended to,
truncated, rewritten, renamed and deleted under them; on PostgreSQL the server is restarted (crash or fast
shutdown) and the destination refuses connections for a while. After a clean run every content
is loaded exactly once or not at all, and the audit agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import DATABASE_FAULTS, FILE_FAULTS, PROCESS_FAULTS, run


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_fixed_seed_campaign_leaves_every_file_exactly_once(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    if database == "postgresql":
        request.getfixturevalue("pg_url")  # skips (or fails in CI) without PostgreSQL
    report = run(seed=20261205, seconds=12, files=40, root=tmp_path, postgres=database == "postgresql")
    print(report.table())
    assert sum(report.faults[kind] for kind in PROCESS_FAULTS) >= 5, report.table()
    assert sum(report.faults[kind] for kind in FILE_FAULTS) >= 3, report.table()
    if database == "postgresql":
        assert all(report.faults[kind] >= 1 for kind in DATABASE_FAULTS), report.table()
    assert report.violations == [], report.table()
