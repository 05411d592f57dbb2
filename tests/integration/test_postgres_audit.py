"""The audit state machine of tests/unit/test_audit.py, every transition, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from filedge_core.audit import AuditStore
from tests.unit import test_audit

pytestmark = pytest.mark.postgres

# Every backend-neutral test of the unit module runs here again against the `audit` fixture below.
for _name in dir(test_audit):
    if _name.startswith("test_") and "sqlite" not in _name:
        globals()[_name] = getattr(test_audit, _name)


@pytest.fixture
def audit(pg_database: str) -> Iterator[AuditStore]:
    store = AuditStore(pg_database)
    store.ensure_schema()
    yield store
    store.dispose()


def test_postgres_url_forms(pg_database: str) -> None:
    for url in (pg_database, pg_database.replace("postgresql://", "postgresql+psycopg://", 1)):
        store = AuditStore(url)
        store.ensure_schema()
        assert store.counts()["PENDING"] == 0
        store.dispose()
