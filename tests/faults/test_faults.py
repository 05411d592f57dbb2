"""A short fixed-seed fault campaign on each database (tests/faults/harness.py): workers are
SIGKILLed, SIGSTOPped past their leases and SIGTERMed while they load; after a clean run every
file's rows are there exactly once and the audit agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import run


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_fixed_seed_campaign_leaves_every_file_exactly_once(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    postgres = request.getfixturevalue("pg_database") if database == "postgresql" else None
    report = run(seed=20261205, seconds=12, files=40, root=tmp_path, postgres=postgres)
    print(report.table())
    assert report.faults["sigkill"] + report.faults["sigstop"] + report.faults["sigterm"] >= 5, report.table()
    assert report.violations == [], report.table()
