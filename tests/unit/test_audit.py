"""The audit state machine on a real SQLite file: every transition and its losing side."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from filedge_core.audit import AuditStore, ErrorKind, FileState
from filedge_core.errors import DatabaseUnavailable, UsageError
from tests.support import age_attempts, age_leases

P = "orders"
H1 = "a" * 64
H2 = "b" * 64


def register(audit: AuditStore, file_hash: str = H1) -> bool:
    return audit.register(P, file_hash, f"/in/{file_hash[:4]}.csv", 10, "cfg")


def state(audit: AuditStore, file_hash: str = H1) -> str:
    row = audit.get(P, file_hash)
    assert row is not None
    return row.state


def set_claimed_at(audit: AuditStore, value: str, file_hash: str = H1) -> None:
    """Write claimed_at from text, like another tool would (raw text on SQLite)."""
    cast = ":v" if audit.backend == "sqlite" else "CAST(:v AS timestamptz)"
    with audit.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE etl_file_audit SET claimed_at = {cast} WHERE file_hash = :h"), {"v": value, "h": file_hash})


def test_register_is_idempotent(audit: AuditStore) -> None:
    assert register(audit) is True
    assert register(audit) is False
    assert audit.counts() == {"PENDING": 1, "PROCESSING": 0, "COMMITTED": 0, "FAILED": 0}


def test_same_hash_in_two_pipelines_is_two_files(audit: AuditStore) -> None:
    assert audit.register("a", H1, "/x", 1, "c") and audit.register("b", H1, "/x", 1, "c")
    assert audit.counts("a")["PENDING"] == 1 and audit.counts()["PENDING"] == 2


def test_claim_counts_attempt_and_bumps_token(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w1", retry_cap=3, config_hash="cfg")
    assert claim is not None
    assert (claim.token, claim.attempts, claim.previous_state) == (1, 1, "PENDING")
    row = audit.get(P, H1)
    assert row.state == "PROCESSING" and row.claimed_by == "w1" and row.claimed_at is not None


def test_double_claim_has_one_winner(audit: AuditStore) -> None:
    register(audit)
    first = audit.claim(P, H1, "w1", 3, "cfg")
    second = audit.claim(P, H1, "w2", 3, "cfg")
    assert first is not None and second is None
    assert audit.get(P, H1).claimed_by == "w1"


def test_concurrent_claims_from_threads_have_one_winner(audit: AuditStore) -> None:
    register(audit)
    winners = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        store = AuditStore(audit.url)
        barrier.wait()
        if store.claim(P, H1, f"w{i}", 3, "cfg"):
            winners.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_commit_needs_the_current_token(audit: AuditStore) -> None:
    register(audit)
    old = audit.claim(P, H1, "w1", 3, "cfg")
    set_claimed_at(audit, "2000-01-01 00:00:00")
    assert audit.reclaim_stale(P, 60, 3).pending == 1
    new = audit.claim(P, H1, "w2", 3, "cfg")
    assert new.token == old.token + 1
    assert audit.commit(old, 5) is False  # the zombie's commit changes nothing
    assert audit.heartbeat(old) is False
    assert audit.fail(old, "boom", ErrorKind.DATA) is False
    assert state(audit) == "PROCESSING"
    assert audit.commit(new, 5) is True
    row = audit.get(P, H1)
    assert (row.state, row.rows_written, row.attempts) == ("COMMITTED", 5, 2)
    assert row.committed_at is not None


def test_committed_file_is_not_claimed_again(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w1", 3, "cfg")
    audit.commit(claim, 1)
    assert audit.claim(P, H1, "w1", 3, "cfg") is None


def test_stale_lease_just_under_and_just_over_timeout(audit: AuditStore) -> None:
    register(audit)
    audit.claim(P, H1, "w1", 3, "cfg")
    timeout = 600.0
    age_leases(audit, 590)
    assert audit.reclaim_stale(P, timeout, 3).pending == 0
    assert state(audit) == "PROCESSING"
    age_leases(audit, 610)
    assert audit.reclaim_stale(P, timeout, 3).pending == 1
    assert state(audit) == "PENDING"


@pytest.mark.parametrize(
    "fmt",
    [
        lambda dt: dt.isoformat(),  # the walkthrough: 2026-01-01T10:00:00.123456+00:00
        lambda dt: dt.strftime("%Y-%m-%d %H:%M:%S"),  # plain SQL text
        lambda dt: dt.astimezone(timezone(timedelta(hours=5))).isoformat(),  # another offset
        lambda dt: dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ],
    ids=["iso-offset", "plain", "iso-plus5", "iso-z"],
)
def test_claimed_at_written_by_other_tools(audit: AuditStore, fmt) -> None:
    register(audit)
    audit.claim(P, H1, "w1", 3, "cfg")
    now = datetime.now(timezone.utc)
    set_claimed_at(audit, fmt(now - timedelta(minutes=5)))
    assert audit.reclaim_stale(P, 600, 3).pending == 0, "a 5-minute-old lease is fresh under a 10-minute timeout"
    set_claimed_at(audit, fmt(now - timedelta(minutes=15)))
    assert audit.reclaim_stale(P, 600, 3).pending == 1
    read_back = audit.get(P, H1).claimed_at
    assert abs(read_back - (now - timedelta(minutes=15))) < timedelta(seconds=1)


def test_reclaim_a_dead_workers_leases_at_once(audit: AuditStore) -> None:
    register(audit, H1)
    register(audit, H2)
    dead = audit.claim(P, H1, "dagster:abcd_123:42", 3, "cfg")
    audit.claim(P, H2, "dagster:abcdX123:42", 3, "cfg")  # '_' is not a wildcard
    assert audit.reclaim_worker(P, "dagster:abcd_123:", 3).pending == 1
    assert (state(audit, H1), state(audit, H2)) == ("PENDING", "PROCESSING")
    assert audit.commit(dead, 1) is False
    again = audit.claim(P, H1, "w", 3, "cfg")
    assert again.token == dead.token + 1


def test_heartbeat_keeps_lease_fresh(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w1", 3, "cfg")
    set_claimed_at(audit, "2000-01-01 00:00:00")
    assert audit.heartbeat(claim) is True
    assert audit.reclaim_stale(P, 60, 3).pending == 0


def test_lost_worker_at_retry_cap_fails_instead_of_looping(audit: AuditStore) -> None:
    register(audit)
    for attempt in (1, 2):
        claim = audit.claim(P, H1, "w", 2, "cfg")
        assert claim.attempts == attempt
        set_claimed_at(audit, "2000-01-01 00:00:00")
        result = audit.reclaim_stale(P, 60, 2)
        if attempt == 1:
            assert result.pending == 1 and result.lost == []
    assert result.pending == 0 and result.lost == [H1]
    row = audit.get(P, H1)
    assert row.state == "FAILED" and row.last_error == "worker lost 2 times" and row.error_kind == "lost"
    assert audit.claim(P, H1, "w", 2, "cfg") is None


def test_data_error_is_terminal(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w", 3, "cfg")
    assert audit.fail(claim, "row 1, column 'a': bad", ErrorKind.DATA)
    assert state(audit) == "FAILED"
    assert audit.claim(P, H1, "w", 3, "cfg") is None


def test_transient_failure_is_retried_until_cap(audit: AuditStore) -> None:
    register(audit)
    for attempt in (1, 2):
        claim = audit.claim(P, H1, "w", 2, "cfg")
        assert claim is not None and claim.attempts == attempt
        assert claim.previous_state == ("PENDING" if attempt == 1 else "FAILED")
        audit.fail(claim, "destination down", ErrorKind.TRANSIENT)
    assert audit.claim(P, H1, "w", 2, "cfg") is None
    assert audit.get(P, H1).claimable(2) is False


def test_release_returns_to_pending_until_cap(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w", 2, "cfg")
    assert audit.release(claim, "file changed", 2)
    assert state(audit) == "PENDING"
    claim = audit.claim(P, H1, "w", 2, "cfg")
    audit.release(claim, "file changed", 2)
    assert state(audit) == "FAILED"


def test_requeue_only_touches_failed(audit: AuditStore) -> None:
    hashes = ["1" * 64, "2" * 64, "3" * 64, "4" * 64]
    for h in hashes:
        register(audit, h)
    c1 = audit.claim(P, hashes[0], "w", 3, "cfg")
    audit.fail(c1, "bad", ErrorKind.DATA)
    c2 = audit.claim(P, hashes[1], "w", 3, "cfg")
    audit.commit(c2, 1)
    audit.claim(P, hashes[2], "w", 3, "cfg")  # PROCESSING
    assert audit.requeue(hashes) == 1
    row = audit.get(P, hashes[0])
    assert (row.state, row.attempts) == ("PENDING", 0)
    assert [state(audit, h) for h in hashes] == ["PENDING", "COMMITTED", "PROCESSING", "PENDING"]
    again = audit.claim(P, hashes[0], "w", 3, "cfg")
    assert again.token == c1.token + 1, "tokens never go backwards, even after requeue"


def test_requeue_all(audit: AuditStore) -> None:
    for h in (H1, H2):
        register(audit, h)
        audit.fail(audit.claim(P, h, "w", 3, "cfg"), "bad", ErrorKind.DATA)
    assert audit.requeue(None) == 2
    assert audit.counts()["PENDING"] == 2


def test_resolve_hash_prefixes(audit: AuditStore) -> None:
    register(audit, "abc1" + "0" * 60)
    register(audit, "abc2" + "0" * 60)
    assert audit.resolve_hashes(["ABC1"]) == ["abc1" + "0" * 60]
    with pytest.raises(UsageError, match="more than one"):
        audit.resolve_hashes(["abc"])
    with pytest.raises(UsageError, match="no file"):
        audit.resolve_hashes(["ffff"])
    with pytest.raises(UsageError, match="hexadecimal"):
        audit.resolve_hashes(["xyz"])


def test_sqlite_unreachable_audit_directory(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'missing' / 'a.db'}")
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        store.ensure_schema()


def test_bad_audit_url_scheme() -> None:
    with pytest.raises(UsageError, match="unsupported"):
        AuditStore("mysql://x/y")


def test_states_are_the_stored_strings() -> None:
    assert [s.value for s in FileState] == ["PENDING", "PROCESSING", "COMMITTED", "FAILED"]


def test_pending_past_a_lowered_retry_cap_becomes_failed(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w", 5, "cfg")
    audit.release(claim, "file changed", 5)  # PENDING with 1 attempt
    assert audit.reclaim_stale(P, 60, 5).exhausted == []
    assert audit.reclaim_stale(P, 60, 1).exhausted == [H1]
    row = audit.get(P, H1)
    assert (row.state, row.last_error) == ("FAILED", "file changed; retry_cap (1) reached")
    assert audit.requeue([H1]) == 1, "requeue can reset it"


def test_a_claim_whose_answer_was_lost_is_still_ours(audit: AuditStore) -> None:
    register(audit)
    first = audit.claim(P, H1, "host:1", 3, "cfg")
    # The same worker asking again (as a retried statement would) gets its lease back...
    again = audit.claim(P, H1, "host:1", 3, "cfg")
    assert again is not None and (again.token, again.attempts) == (first.token, first.attempts)
    # ...another worker does not.
    assert audit.claim(P, H1, "host:2", 3, "cfg") is None


# -- attempt history (etl_file_attempts) ---------------------------------------------------


def history(audit: AuditStore, file_hash: str = H1) -> list[tuple[int, str | None]]:
    """(claim token, outcome) of each recorded attempt."""
    return [(a.claim_token, a.outcome) for a in audit.attempts(P, file_hash)]


def test_claim_opens_an_attempt_and_commit_closes_it(audit: AuditStore) -> None:
    register(audit)
    claim = audit.claim(P, H1, "w1", 3, "cfg2", "orders", "postgresql://loader:s3cret@db.internal/dw")
    (attempt,) = audit.attempts(P, H1)
    row = audit.get(P, H1)
    assert (attempt.claim_token, attempt.worker, attempt.config_hash) == (claim.token, "w1", "cfg2")
    assert (attempt.dest_table, attempt.dest_url) == ("orders", "postgresql://loader:***@db.internal/dw")
    assert attempt.started_at == row.claimed_at and attempt.ended_at is None and attempt.outcome is None
    assert audit.commit(claim, 5, 2)
    (attempt,) = audit.attempts(P, H1)
    assert (attempt.outcome, attempt.rows_written, attempt.rows_rejected, attempt.error) == ("committed", 5, 2, None)
    assert attempt.ended_at is not None and attempt.duration_s >= 0


def test_every_way_an_attempt_ends_is_recorded(audit: AuditStore) -> None:
    register(audit)
    audit.fail(audit.claim(P, H1, "w", 9, "cfg"), "destination down", ErrorKind.TRANSIENT)
    audit.release(audit.claim(P, H1, "w", 9, "cfg"), "file changed", 9)
    audit.give_back(audit.claim(P, H1, "w", 9, "cfg"), "interrupted")
    audit.claim(P, H1, "w", 9, "cfg")
    age_leases(audit)
    assert audit.reclaim_stale(P, 60, 9).pending == 1
    audit.claim(P, H1, "dagster:abcd1234:7", 9, "cfg")
    assert audit.reclaim_worker(P, "dagster:abcd1234:", 9).pending == 1
    audit.fail(audit.claim(P, H1, "w", 9, "cfg"), "row 1: bad", ErrorKind.DATA)
    attempts = audit.attempts(P, H1)
    assert [(a.claim_token, a.outcome, a.error_kind) for a in attempts] == [
        (1, "failed", "transient"), (2, "released", "changed"), (3, "given_back", None), (4, "lost", "lost"),
        (5, "lost", "lost"), (6, "failed", "data"),
    ]
    assert [a.error for a in attempts] == [
        "destination down", "file changed", "interrupted", "lease not renewed for 60 s: reclaimed",
        "holder dagster:abcd1234:... known dead: reclaimed", "row 1: bad",
    ]
    assert all(a.ended_at is not None for a in attempts)
    assert audit.get(P, H1).attempts == 5, "the given-back attempt is in the history but not charged"


def test_one_reclaim_closes_the_attempt_of_every_file_it_reclaims(audit: AuditStore) -> None:
    hashes = [H1, H2, "c" * 64]
    for h in hashes:
        register(audit, h)
    for _ in range(2):
        for h in hashes:
            audit.claim(P, h, "w", 2, "cfg")
        age_leases(audit)
        reclaimed = audit.reclaim_stale(P, 60, 2)
    assert sorted(reclaimed.lost) == hashes
    assert [history(audit, h) for h in hashes] == [[(1, "lost"), (2, "lost")]] * 3


def test_a_losing_transition_writes_no_history(audit: AuditStore) -> None:
    register(audit)
    old = audit.claim(P, H1, "w1", 3, "cfg")
    assert audit.claim(P, H1, "w2", 3, "cfg") is None  # the loser opens no attempt
    age_leases(audit)
    audit.reclaim_stale(P, 60, 3)
    new = audit.claim(P, H1, "w2", 3, "cfg")
    assert not audit.commit(old, 1) and not audit.fail(old, "x", ErrorKind.DATA) and not audit.give_back(old, "x")
    assert not audit.release(old, "x", 3)
    assert history(audit) == [(1, "lost"), (2, None)], "the zombie's transitions changed no attempt"
    assert audit.fenced(new, "not lost") is False, "a running attempt is not marked fenced"
    assert audit.fenced(old, "write refused: claim token 1 is older than 2")
    assert audit.commit(new, 3)
    assert history(audit) == [(1, "fenced"), (2, "committed")]
    assert audit.attempts(P, H1)[0].error == "write refused: claim token 1 is older than 2"


def test_concurrent_claims_open_one_attempt(audit: AuditStore) -> None:
    register(audit)
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        store = AuditStore(audit.url)
        barrier.wait()
        store.claim(P, H1, f"w{i}", 3, "cfg")
        store.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (attempt,) = audit.attempts(P, H1)
    assert attempt.worker == audit.get(P, H1).claimed_by


def test_prune_deletes_only_ended_attempts_older_than_asked(audit: AuditStore) -> None:
    for h in (H1, H2, "c" * 64):
        register(audit, h)
    audit.commit(audit.claim(P, H1, "w", 3, "cfg"), 1)
    audit.fail(audit.claim(P, H2, "w", 3, "cfg"), "bad", ErrorKind.DATA)
    audit.claim(P, "c" * 64, "w", 3, "cfg")  # still running
    audit.register("other", H1, "/x", 1, "cfg")
    audit.commit(audit.claim("other", H1, "w", 3, "cfg"), 1)
    age_attempts(audit, 3 * 86400)
    age_attempts(audit, 3600, H2)
    assert audit.prune_attempts(2, dry_run=True) == 2
    assert audit.prune_attempts(2, pipeline=P) == 1
    assert history(audit, H1) == [] and history(audit, H2) == [(1, "failed")]
    assert audit.prune_attempts(0) == 2
    assert audit.prune_attempts(0) == 0
    assert history(audit, "c" * 64) == [(1, None)], "a running attempt is never pruned"
    assert audit.counts() == {"PENDING": 0, "PROCESSING": 1, "COMMITTED": 2, "FAILED": 1}, "no audit row is touched"
    assert audit.claim(P, H1, "w", 3, "cfg") is None, "a pruned committed file is still committed"


def test_an_audit_database_from_before_history_gets_the_table(audit: AuditStore) -> None:
    with audit.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE etl_file_attempts"))
    register(audit)
    fresh = AuditStore(audit.url)
    fresh.ensure_schema()
    fresh.commit(fresh.claim(P, H1, "w", 3, "cfg"), 1)
    assert history(fresh) == [(1, "committed")]
    fresh.dispose()


def test_a_file_registered_again_replaces_its_stale_history(audit: AuditStore) -> None:
    """Deleting an audit row restarts its tokens: the old attempt of the same token is replaced."""
    register(audit)
    audit.fail(audit.claim(P, H1, "w", 3, "cfg"), "bad", ErrorKind.DATA)
    with audit.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM etl_file_audit"))
    register(audit)
    claim = audit.claim(P, H1, "w2", 3, "cfg")
    assert claim.token == 1
    (attempt,) = audit.attempts(P, H1)
    assert (attempt.worker, attempt.outcome, attempt.error, attempt.ended_at) == ("w2", None, None, None)
    assert audit.commit(claim, 1)
    assert history(audit) == [(1, "committed")]


# -- the stat cache follows the audit rows -------------------------------------------------------

FP = (10, 1, 1, 1)  # a (size, mtime_ns, ctime_ns, inode) fingerprint


def cache_both(audit: AuditStore) -> None:
    register(audit, H1)
    register(audit, H2)
    audit.remember_hashes(P, [("/in/a.csv", FP, H1), ("/in/b.csv", FP, H2)])


def test_an_audit_row_deleted_by_hand_takes_its_cached_hashes_with_it(audit: AuditStore) -> None:
    """A cached hash is taken as registered: without this, the file would be skipped as loaded."""
    cache_both(audit)
    with audit.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM etl_file_audit WHERE file_hash = :h"), {"h": H1})
    assert audit.cached_hashes(P) == {"/in/b.csv": (FP, H2)}


def test_an_audit_table_dropped_by_hand_starts_over_with_an_empty_cache(audit: AuditStore) -> None:
    cache_both(audit)
    with audit.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE etl_file_audit"))
    fresh = AuditStore(audit.url)
    fresh.ensure_schema()
    assert fresh.cached_hashes(P) == {} and fresh.counts()["PENDING"] == 0
    register(fresh, H1)
    fresh.remember_hashes(P, [("/in/a.csv", FP, H1)])
    with fresh.engine.begin() as conn:  # the trigger came back with the table
        conn.execute(sa.text("DELETE FROM etl_file_audit"))
    assert fresh.cached_hashes(P) == {}
    fresh.dispose()


def test_an_audit_database_made_before_the_cache_trigger_gets_it(audit: AuditStore) -> None:
    cache_both(audit)
    with audit.engine.begin() as conn:
        if audit.backend == "sqlite":
            conn.execute(sa.text("DROP TRIGGER etl_file_audit_forget_cached"))
        else:
            conn.execute(sa.text("DROP TRIGGER etl_file_audit_forget_cached ON etl_file_audit"))
            conn.execute(sa.text("DROP TRIGGER etl_file_audit_forget_all_cached ON etl_file_audit"))
            conn.execute(sa.text("DROP FUNCTION etl_file_audit_forget_cached()"))
        conn.execute(sa.text("DROP INDEX ix_etl_file_stat_cache_hash"))
    upgraded = AuditStore(audit.url)
    upgraded.ensure_schema()
    with upgraded.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM etl_file_audit WHERE file_hash = :h"), {"h": H2})
    assert upgraded.cached_hashes(P) == {"/in/a.csv": (FP, H1)}
    upgraded.dispose()
