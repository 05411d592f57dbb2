"""Bench set-up: states that would take too long to reach by loading (100,000 committed files,
a 100,000-row audit table), written through filedge's own audit API plus one bulk UPDATE."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from filedge_core.audit import AuditStore
from filedge_core.config import load_pipeline
from filedge_core.scan import hash_file, list_candidates

from . import data


def _commit_all(audit: AuditStore, pipeline: str) -> None:
    with audit.engine.begin() as conn:
        conn.execute(sa.text(
            "UPDATE etl_file_audit SET state = 'COMMITTED', attempts = 1, claim_token = 1, rows_written = 1, "
            "committed_at = updated_at WHERE pipeline = :p"
        ), {"p": pipeline})


def make(incoming: str, config_path: str, audit_url: str, files: int) -> None:
    """``files`` one-row files in ``incoming``, registered, COMMITTED, and in the stat cache, as
    a long-running deployment would have them."""
    directory = Path(incoming)
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        (directory / f"f{n:07d}.csv").write_text(data.HEADER + data.rows_text(n, n + 1))
    config = load_pipeline(config_path)
    audit = AuditStore(audit_url)
    audit.ensure_schema()
    found = [(hash_file(c.path), str(c.path), c.size) for c in list_candidates(directory)]
    for start in range(0, len(found), 10_000):
        audit.register_many(config.name, found[start:start + 10_000], config.config_hash)
    _commit_all(audit, config.name)
    cache = {str(c.path): c for c in list_candidates(directory)}
    audit.remember_hashes(config.name, [(path, cache[path].fingerprint, h) for h, path, _ in found])
    audit.dispose()


def fill_audit(audit_url: str, rows: int) -> None:
    """An audit table of ``rows`` files of one pipeline, most COMMITTED."""
    audit = AuditStore(audit_url)
    audit.ensure_schema()
    entries = [(f"{n:064x}", f"/data/incoming/f{n:07d}.csv", 100) for n in range(rows)]
    for start in range(0, rows, 10_000):
        audit.register_many("bench", entries[start:start + 10_000], "0" * 64)
    _commit_all(audit, "bench")
    with audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE etl_file_audit SET state = 'FAILED' WHERE file_hash LIKE '%7'"))
    audit.dispose()
