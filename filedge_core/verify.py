"""``filedge verify``: reconcile the audit table, the destination's ledger and its rows per file hash.

What agreeing means depends on the write mode (docs/verify.md has the rules and why):

- ``append``: a COMMITTED file's ``rows_written``, its ledger ``row_count`` and its rows in the
  table are equal, and ``rows_rejected`` equals its rows in ``<dest_table>_rejected``;
- ``upsert``: the same, except that a file of a later order may have taken over some of its rows
  (fewer rows in the table, never more), which is only possible once such a file is in the ledger;
- ``replace``: only the current snapshot (the latest file order written) has rows; every other
  file has none, and a ledger ``row_count`` of 0 if it has a ledger row at all.

Rejected rows are counted as distinct ``row_number`` per hash in ``<dest_table>_rejected``.

Rows of a file that is not COMMITTED are what an interrupted attempt left; the next run's retry
rewrites them ("pending rewrite", not a disagreement) unless no run will retry the file.

The destination is read first, in one snapshot, then the audit table: a hash with rows in that
snapshot and no audit row afterwards is a real orphan (files are registered before they are
written), and a file committed after verify began reading (``recent``) is not compared: its rows
may have been written after the snapshot."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audit import AuditStore, FileState, VerifyRow, claimable, snapshot_order
from .errors import ConfigError, UsageError

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .connectors.base import Inventory, LedgerEntry

# Kinds of findings; every one but PENDING_REWRITE is a disagreement.
ORPHAN = "orphan"
NO_LEDGER = "missing ledger row"
COUNTS = "count mismatch"
REJECTS = "rejects mismatch"
REPLACED = "replaced snapshot"
STRANDED = "stranded rows"
TOKEN = "ledger token ahead"
PENDING_REWRITE = "pending rewrite"

# What --fix did for a file.
REQUEUED = "requeued"
TOKEN_RAISED = "token raised"
QUEUED = "queued already"
NOT_FIXED = "not fixed"

_COMMITTED = FileState.COMMITTED.value
_PROCESSING = FileState.PROCESSING.value


@dataclass(frozen=True)
class Finding:
    """One disagreement (or, when ``disagreement`` is False, one expected transient state).

    ``target``: the file whose reload (or, for a ledger token ahead, whose token raise) repairs
    it under ``--fix`` — in ``replace``, the current snapshot; None when --fix leaves it, and
    ``why_left`` says why."""

    kind: str
    file_hash: str
    state: str | None  # None: the audit table does not know the hash
    path: str | None
    detail: str
    disagreement: bool = True
    target: str | None = None
    why_left: str = ""

    def line(self) -> str:
        where = f"{self.state} {self.path}" if self.state else "(not in the audit table)"
        return f"{self.kind}: {self.file_hash[:12]} {where}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "file_hash": self.file_hash, "state": self.state, "path": self.path,
            "detail": self.detail, "disagreement": self.disagreement,
        }


@dataclass(frozen=True)
class Repair:
    """What ``--fix`` did for one file, on behalf of ``findings`` disagreements."""

    file_hash: str
    path: str | None
    action: str  # REQUEUED, TOKEN_RAISED, QUEUED or NOT_FIXED
    detail: str
    findings: int = 1

    def line(self) -> str:
        return f"{self.action}: {self.file_hash[:12]} {self.path or '(not in the audit table)'}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"file_hash": self.file_hash, "path": self.path, "action": self.action, "detail": self.detail}


@dataclass
class VerifyReport:
    """The findings of one verify, and what ``--fix`` did (None without it)."""

    pipeline: str
    checked: int
    findings: list[Finding]
    in_flight: int = 0  # committed while verify read the databases: not checked
    repairs: list[Repair] | None = None

    @property
    def disagreements(self) -> int:
        return sum(f.disagreement for f in self.findings)

    @property
    def pending(self) -> int:
        return sum(not f.disagreement for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 when everything agrees, 1 when any disagreement was found (fixed or not)."""
        return 1 if self.disagreements else 0

    def summary(self) -> str:
        line = f"Checked: {self.checked} files; disagreements: {self.disagreements}; pending rewrite: {self.pending}"
        if self.repairs is not None:
            left = sum(r.findings for r in self.repairs if r.action == NOT_FIXED)
            line += f"; repaired: {self.disagreements - left}; not fixed: {left}"
        return line

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pipeline": self.pipeline,
            "checked": self.checked,
            "disagreements": self.disagreements,
            "pending_rewrite": self.pending,
            "in_flight": self.in_flight,
            "findings": [f.as_dict() for f in self.findings],
        }
        if self.repairs is not None:
            data["repairs"] = [r.as_dict() for r in self.repairs]
        return data


def open_audit(url: str) -> AuditStore:
    """The audit store at ``url``, which must exist already: verify creates nothing, and an empty
    audit table would make every loaded file look like an orphan."""
    store = AuditStore(url)
    if not store.has_schema():
        store.dispose()
        raise UsageError(f"--audit-db-url: {store.display_url} has no audit table (etl_file_audit); is it the right URL?")
    return store


def verify_pipeline(
    config: PipelineConfig, audit: AuditStore, *, fix: bool = False, directory: str | os.PathLike[str] | None = None
) -> VerifyReport:
    """Reconcile one pipeline; with ``fix``, repair what a reload can (see ``repair``)."""
    from .connectors import open_connector

    if directory is not None and not os.path.isdir(directory):  # before anything is read
        problem = "not a directory" if os.path.exists(directory) else "no such directory"
        raise ConfigError(f"--dir {os.path.abspath(directory)}: {problem}")
    if fix and directory is None and config.after_commit.cleans_up:
        # A committed file's recorded path is its archive (or nothing): a requeue would name
        # bytes no run scans, and verify would then call the damage a pending rewrite.
        raise UsageError(
            f"verify --fix: the pipeline cleans up committed files (after_commit: {config.after_commit.action}); "
            "give --dir DIR, the directory runs load, and put the files to reload back into it"
        )
    since = audit.clock()  # before the destination is read: later commits are "recent"
    connector = open_connector(config)
    try:
        inventory = connector.inventory()
    finally:
        connector.close()
    rows = audit.verify_rows(config.name, since)
    findings, orphans = reconcile(config, rows, inventory)
    report = VerifyReport(config.name, len(rows) + orphans, findings, sum(r.recent for r in rows))
    if fix:
        report.repairs = repair(config, audit, findings, rows, inventory, directory)
    return report


def _claimable(row: VerifyRow, retry_cap: int) -> bool:
    """Whether the next run claims the file."""
    return claimable(row.state, row.error_kind, row.attempts, retry_cap)


def file_order(row: VerifyRow) -> str:
    """The file's order as ``runner.file_order`` computes it at claim time (first seen, path)."""
    return snapshot_order(row.created_at, row.path)


def current_snapshot(settled: dict[str, VerifyRow], inventory: Inventory) -> str | None:
    """``replace``: the file whose rows the table should hold — the latest file order written.

    Written files are those in the ledger, plus COMMITTED files that wrote rows but lost their
    ledger row (their order is then taken from the audit row)."""
    orders = {h: entry.file_order or "" for h, entry in inventory.ledger.items()}
    for h, row in settled.items():
        if row.state == _COMMITTED and (row.rows_written or 0) > 0 and h not in inventory.ledger:
            orders[h] = file_order(row)
    return max(orders, key=lambda h: (orders[h], h), default=None)


def reconcile(config: PipelineConfig, rows: list[VerifyRow], inventory: Inventory) -> tuple[list[Finding], int]:
    """Every finding, orphans first then by hash; and the number of orphan hashes."""
    known = {row.file_hash: row for row in rows}
    settled = {h: row for h, row in known.items() if not row.recent}
    held = set(inventory.rows) | set(inventory.rejects) | set(inventory.ledger)
    orphans = sorted(held - known.keys())
    findings = [_orphan(config, h, inventory) for h in orphans]
    current = current_snapshot(settled, inventory) if config.write_mode == "replace" else None
    latest = max((e.file_order for e in inventory.ledger.values() if e.file_order), default=None)
    for h in sorted(settled):
        _check(config, settled[h], inventory, current, latest, findings)
    return findings, len(orphans)


def _held(config: PipelineConfig, rows: int, rejects: int, entry: LedgerEntry | None = None) -> str:
    parts = [f"{config.dest_table} holds {rows} row(s)"]
    if rejects:
        parts.append(f"{config.rejected_table} {rejects} rejected row(s)")
    if entry is not None:
        parts.append(f"ledger row_count {entry.row_count}")
    return ", ".join(parts)


def _orphan(config: PipelineConfig, file_hash: str, inventory: Inventory) -> Finding:
    entry = inventory.ledger.get(file_hash)
    detail = _held(config, inventory.rows.get(file_hash, 0), inventory.rejects.get(file_hash, 0), entry)
    if entry is not None:
        detail += f" (token {entry.claim_token})"
    return Finding(
        ORPHAN, file_hash, None, None, detail,
        why_left="rows of a hash the audit does not know are never deleted by filedge (docs/verify.md)",
    )


def _check(
    config: PipelineConfig,
    row: VerifyRow,
    inventory: Inventory,
    current: str | None,
    latest: str | None,
    found: list[Finding],
) -> None:
    """Add the findings of one file the audit knows to ``found``. (Messages are only built for
    findings: this runs once per file.)"""
    h, mode = row.file_hash, config.write_mode
    rows, rejects, entry = inventory.rows.get(h, 0), inventory.rejects.get(h, 0), inventory.ledger.get(h)

    def add(kind: str, detail: str, **extra: Any) -> None:
        found.append(Finding(kind, h, row.state, row.path, detail, **extra))

    if entry is not None and entry.claim_token > row.claim_token:
        detail = f"ledger claim_token {entry.claim_token} > audit claim_token {row.claim_token}: a reload would be refused as fenced"
        if row.state == _PROCESSING:
            add(TOKEN, detail, why_left="a worker holds the file (PROCESSING); run verify --fix again later")
        else:
            add(TOKEN, detail, target=h)

    if mode == "replace" and h != current:
        # Every write deletes the whole table, and the newest snapshot's write zeroes the other
        # files' ledger counts; a superseded file writes nothing (no ledger row, 0 rows written).
        if rows or rejects or (entry is not None and entry.row_count):
            if current is None:
                add(REPLACED, _held(config, rows, rejects, entry) + "; no file is known to be the current snapshot",
                    why_left="no current snapshot to reload")
            else:
                add(REPLACED, _held(config, rows, rejects, entry)
                    + f"; only the current snapshot ({current[:12]}) should have rows", target=current)
        return

    if row.state != _COMMITTED:
        if rows or rejects:
            if _queued(row, config.retry_cap):
                add(PENDING_REWRITE, _held(config, rows, rejects) + " of this file; the next run rewrites them",
                    disagreement=False)
            else:
                add(STRANDED, _held(config, rows, rejects) + f" of this file, which no run will retry "
                    f"(attempts {row.attempts}/{config.retry_cap}"
                    + (f", {row.error_kind} error" if row.error_kind else "") + ")", target=h)
        return

    written, rejected = row.rows_written or 0, row.rows_rejected or 0
    if entry is None:  # one line for the file: its reload rewrites rows, rejects and ledger row
        detail = f"rows_written {written}, {config.dest_table} holds {rows} row(s)"
        if rejected or rejects:
            detail += f"; {_rejects_text(config, rejected, rejects)}"
        add(NO_LEDGER, detail, target=h)
        return
    if mode == "upsert":
        # A row moves to a file of a later order that has the same key: a file may keep fewer
        # rows than it wrote, once such a file was written (it is in the ledger).
        agree = written == entry.row_count and (
            rows == written
            or (rows < written and latest is not None and (entry.file_order is None or latest > entry.file_order))
        )
    else:
        agree = written == entry.row_count == rows
    if not agree:
        counts = f"rows_written {written}, ledger row_count {entry.row_count}, {config.dest_table} holds {rows} row(s)"
        if mode == "upsert" and rows > entry.row_count:
            add(COUNTS, counts, why_left="upsert never deletes rows: a reload would keep the extra rows "
                "and count them as this file's; remove them by hand (docs/verify.md)")
        else:
            add(COUNTS, counts, target=h)
    if rejects != rejected:
        add(REJECTS, _rejects_text(config, rejected, rejects), target=h)


def _rejects_text(config: PipelineConfig, rejected: int, rejects: int) -> str:
    return f"rows_rejected {rejected}, {config.rejected_table} holds {rejects} rejected row(s)"


def repair(
    config: PipelineConfig,
    audit: AuditStore,
    findings: list[Finding],
    rows: Iterable[VerifyRow],
    inventory: Inventory,
    directory: str | os.PathLike[str] | None,
) -> list[Repair]:
    """``--fix``: requeue each file whose reload repairs a disagreement (PENDING, attempts 0, the
    reasons in ``last_error``, its claim token raised to the ledger's), if its bytes can still
    be found — in ``directory`` when given, else at the path the audit recorded; raise the claim
    token of files only behind the ledger. Every change is conditional on the audit row being
    as it was read. Nothing in the destination is changed or deleted."""
    known = {row.file_hash: row for row in rows}
    repairs: list[Repair] = []
    by_target: dict[str, list[Finding]] = {}
    for f in findings:
        if not f.disagreement:
            continue
        if f.target is None:
            repairs.append(Repair(f.file_hash, f.path, NOT_FIXED, f.why_left))
        else:
            by_target.setdefault(f.target, []).append(f)
    # Files to requeue: known, and not loaded by a worker or the next run anyway.
    reloads = {
        h for h, fs in by_target.items()
        if h in known and any(f.kind != TOKEN for f in fs) and not _queued(known[h], config.retry_cap)
    }
    present = _sources_present(config, audit, [known[h] for h in reloads], directory)
    changed = "its audit row changed while verify ran; run verify again"
    for h in sorted(by_target):
        fs, row = by_target[h], known.get(h)
        if row is None:  # replace: the current snapshot is an orphan
            repairs.append(Repair(h, None, NOT_FIXED, "the current snapshot is not in the audit table", len(fs)))
            continue
        entry = inventory.ledger.get(h)
        ledger_token = entry.claim_token if entry is not None else 0
        if h not in reloads:  # only its token, or a worker or the next run reloads it anyway
            if row.state == _PROCESSING:
                done = Repair(h, row.path, QUEUED, "PROCESSING: its load under way, or its retry, rewrites it", len(fs))
            elif ledger_token > row.claim_token and not audit.repair(
                config.name, h, row.state, row.claim_token, ledger_token, None
            ):
                done = Repair(h, row.path, NOT_FIXED, changed, len(fs))
            elif any(f.kind != TOKEN for f in fs):
                raised = f" (claim_token raised to {ledger_token})" if ledger_token > row.claim_token else ""
                done = Repair(h, row.path, QUEUED, f"{row.state}: the next run reloads it{raised}", len(fs))
            else:
                done = Repair(h, row.path, TOKEN_RAISED, f"claim_token {row.claim_token} -> {ledger_token}", len(fs))
            repairs.append(done)
            continue
        reasons = "; ".join(
            f.kind + (f" ({f.file_hash[:12]})" if f.file_hash != h else "") + f": {f.detail}" for f in fs
        )
        if h not in present:
            where = f"in {directory}" if directory is not None else f"at {row.path}"
            done = Repair(h, row.path, NOT_FIXED, f"its bytes are not {where} any more, so no run could reload it", len(fs))
        elif audit.repair(config.name, h, row.state, row.claim_token, ledger_token, f"verify: {reasons}"):
            done = Repair(h, row.path, REQUEUED, reasons, len(fs))
        else:
            done = Repair(h, row.path, NOT_FIXED, changed, len(fs))
        repairs.append(done)
    return repairs


def _queued(row: VerifyRow, retry_cap: int) -> bool:
    """Whether the file will be written again without a requeue: held by a worker (whose load,
    or its retry once the lease is reclaimed, rewrites it), or claimable by the next run."""
    return row.state == _PROCESSING or _claimable(row, retry_cap)


def _sources_present(
    config: PipelineConfig, audit: AuditStore, rows: list[VerifyRow], directory: str | os.PathLike[str] | None
) -> set[str]:
    """The hashes of ``rows`` whose bytes a run can find: anywhere in ``directory`` (as a run
    scans it, through the stat cache), or, without one, at the path the audit recorded."""
    if not rows:
        return set()
    if directory is not None:
        from .runner import RunSummary, scan_directory

        return {item.file_hash for item in scan_directory(directory, config, RunSummary(), audit)}
    from .scan import hash_file

    found = set()
    for row in rows:
        try:
            if Path(row.path).is_file() and hash_file(row.path) == row.file_hash:
                found.add(row.file_hash)
        except OSError:
            continue
    return found


__all__ = ["Finding", "Repair", "VerifyReport", "open_audit", "reconcile", "repair", "verify_pipeline"]
