"""The audit state machine of tests/unit/test_audit.py, every transition, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def _ensure(url: str, out: Any) -> None:
    try:
        AuditStore(url).ensure_schema()
        out.put("ok")
    except Exception as exc:  # reported to the test
        out.put(repr(exc))


def test_workers_creating_the_schema_at_once(pg_database: str) -> None:
    """Six processes starting on an empty database all get the tables (no catalog race)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(pg_database, out)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [out.get(timeout=5) for _ in procs] == ["ok"] * 6


def test_a_stuck_schema_creator_blocks_no_command_once_the_tables_exist(pg_database: str) -> None:
    """A process stopped while holding the schema lock (SIGSTOP, a hung client) must not freeze
    every later command: with the tables there, none of them waits for the lock."""
    import time

    import psycopg

    from filedge_core.audit import _DDL_LOCK_KEY
    from tests.support import filedge, libpq_url

    AuditStore(pg_database).ensure_schema()  # the tables exist
    with psycopg.connect(libpq_url(pg_database)) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK_KEY,))  # and stays in its transaction
        started = time.monotonic()
        result = filedge("status", "--audit-db-url", pg_database, timeout=30)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10


def test_truncating_the_audit_table_empties_the_stat_cache(audit: AuditStore) -> None:
    test_audit.cache_both(audit)
    with audit.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE etl_file_audit")
    assert audit.cached_hashes(test_audit.P) == {}


def test_a_delete_from_a_session_with_another_search_path_forgets_the_cache(audit: AuditStore) -> None:
    """The trigger's function finds the cache table whatever the deleting session's search_path."""
    test_audit.cache_both(audit)
    with audit.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL search_path TO pg_catalog")
        conn.exec_driver_sql("DELETE FROM public.etl_file_audit WHERE file_hash = %s", (test_audit.H1,))
    assert audit.cached_hashes(test_audit.P) == {"/in/b.csv": (test_audit.FP, test_audit.H2)}


def test_a_role_that_may_not_add_the_cache_trigger_still_works(pg_database: str, pg_admin: Any) -> None:
    """Tables an older filedge made, used by a role that is not their owner: the trigger cannot
    be added by it, and its commands work without it; the owner's next command adds it."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from tests.support import filedge

    store = AuditStore(pg_database)
    store.ensure_schema()
    store.dispose()
    role = f"filedge_user_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as owner:
        owner.execute("DROP TRIGGER etl_file_audit_forget_cached ON etl_file_audit")
        owner.execute("DROP TRIGGER etl_file_audit_forget_all_cached ON etl_file_audit")
        owner.execute("DROP FUNCTION etl_file_audit_forget_cached()")
        owner.execute("DROP INDEX ix_etl_file_stat_cache_hash")
        pg_admin.execute(f"CREATE ROLE {role} LOGIN")
        owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        parts = urlsplit(pg_database)
        as_user = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        used = filedge("status", "--audit-db-url", as_user)
        assert (used.returncode, used.stderr) == (0, "")
        triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'etl_file_audit'::regclass AND NOT tgisinternal"
        with psycopg.connect(pg_database, autocommit=True) as owner:
            assert owner.execute(triggers).fetchone() == (0,)
            assert filedge("status", "--audit-db-url", pg_database).returncode == 0
            assert owner.execute(triggers).fetchone() == (2,)
    finally:
        with psycopg.connect(pg_database, autocommit=True) as owner:
            owner.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        pg_admin.execute(f"DROP ROLE {role}")
