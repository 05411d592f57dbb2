"""The one ingestion path: scan -> register -> claim -> read/validate -> write -> commit.

The command line and the Dagster asset both call these functions; neither re-implements a step."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .audit import AuditStore, Claim, ErrorKind, FileState
from .batches import FileBatches
from .config import PipelineConfig
from .connectors import Connector, FileWrite, open_connector
from .errors import FiledgeError, FileOutcome, LeaseLost, TransientError
from .faults import checkpoint
from .scan import Candidate, hash_file, list_candidates
from .source import open_snapshot

# A file changed within this window could change again without its mtime or ctime moving
# (coarse file-system clocks): it is hashed on every scan until it has settled.
STAT_CACHE_SETTLE_NS = 2_000_000_000

# Where each error class sends the file's audit row: the one place this is decided.
_FAIL_KIND = {FileOutcome.TERMINAL: ErrorKind.DATA, FileOutcome.RETRY: ErrorKind.TRANSIENT}


def worker_id() -> str:
    """This process's identity in ``claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    ``outcome``: ``committed`` (by this call), ``already_committed`` (nothing to do), ``failed``,
    ``released`` (the file changed while read), ``fenced`` (another worker's newer claim won),
    ``busy`` (another worker holds a live lease). ``retryable``: a later attempt may succeed.
    ``note``: what else the user should know (e.g. a snapshot superseded by a newer one)."""

    file_hash: str
    path: str
    outcome: str
    rows_written: int = 0
    error: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    retryable: bool = False
    rows_rejected: int = 0
    note: str | None = None

    @property
    def committed(self) -> bool:
        return self.outcome == "committed"


@dataclass
class RunSummary:
    """The counters of one run, printed as the summary line."""

    committed: int = 0
    failed: int = 0
    skipped: int = 0
    new: int = 0
    reclaimed: int = 0
    retried: int = 0
    results: list[FileResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"Committed: {self.committed} Failed: {self.failed} Skipped: {self.skipped} "
            f"New: {self.new} Reclaimed: {self.reclaimed} Retried: {self.retried}"
        )

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, result: FileResult) -> None:
        """Count one claimed file's outcome."""
        self.results.append(result)
        if result.outcome == "committed":
            self.committed += 1
            if result.note:
                self.warnings.append(f"{result.path}: {result.note}")
        elif result.outcome == "fenced":
            self.skipped += 1  # another worker owns the file now
            self.warnings.append(f"{result.path}: {result.error}")
        else:
            self.failed += 1


class Heartbeat:
    """Renews one lease in the background while its file is processed.

    All leases of a process share one background thread, started on first use: starting a
    thread per file cost more than a small file's whole load."""

    _condition = threading.Condition()
    _active: set["Heartbeat"] = set()
    _thread: threading.Thread | None = None

    def __init__(self, audit: AuditStore, claim: Claim, interval_s: float) -> None:
        self.audit = audit
        self.claim = claim
        self.interval_s = interval_s
        self.lost = False
        self.due = 0.0

    def __enter__(self) -> "Heartbeat":
        cls = type(self)
        with cls._condition:
            self.due = time.monotonic() + self.interval_s
            cls._active.add(self)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="filedge-heartbeat", daemon=True)
                cls._thread.start()
            cls._condition.notify()
        return self

    def __exit__(self, *exc: object) -> None:
        with type(self)._condition:
            type(self)._active.discard(self)

    @classmethod
    def _run(cls) -> None:
        while True:
            with cls._condition:
                now = time.monotonic()
                due = [beat for beat in cls._active if beat.due <= now]
                if not due:
                    wait = min((beat.due for beat in cls._active), default=now + 3600) - now
                    cls._condition.wait(timeout=max(wait, 0.001))
                    continue
                for beat in due:
                    beat.due = now + beat.interval_s
            for beat in due:  # outside the lock: a renewal is a database round trip
                try:
                    if not beat.audit.heartbeat(beat.claim):
                        beat.lost = True
                        with cls._condition:
                            cls._active.discard(beat)
                except FiledgeError:
                    continue  # the audit DB may come back before the lease goes stale


def heartbeat_interval(config: PipelineConfig) -> float:
    """Renew four times per stale timeout, at most once a minute."""
    return max(0.05, min(config.stale_timeout_seconds / 4.0, 60.0))


def file_order(claim: Claim) -> str:
    """The order of snapshots for ``write_mode: replace``: first seen, then by path."""
    return f"{claim.registered_at}|{claim.path}"


def process_claim(
    claim: Claim, path: str, config: PipelineConfig, audit: AuditStore, connector: Connector
) -> FileResult:
    """Load one claimed file and settle its audit row. Never raises for the file's own problems.

    The file is read in batches inside the destination transaction (``FileBatches``): the
    bytes are hashed as they are parsed, and the transaction cannot commit unless they are
    the claimed bytes."""
    started = time.monotonic()
    with Heartbeat(audit, claim, heartbeat_interval(config)) as heartbeat:

        def still_ours() -> None:  # no need to write what the ledger would refuse
            if heartbeat.lost:
                raise LeaseLost("lease lost while the file was read; another worker owns it now")

        try:
            checkpoint("after_claim")
            with open_snapshot(path, claim.file_hash) as snapshot:
                batches = FileBatches(snapshot, config, check=still_ours)
                written = connector.write(
                    FileWrite(claim.pipeline, claim.file_hash, claim.token, batches, file_order(claim))
                )
            checkpoint("after_dest_commit")
            rejected = 0 if written.superseded_by else batches.rows_rejected
            if not audit.commit(claim, written.rows_written, rejected):
                raise LeaseLost("lease lost after the destination write; the newer claim will rewrite the file")
            checkpoint("after_audit_commit")
            note = None
            if written.superseded_by:
                note = f"not loaded: a newer snapshot ({written.superseded_by[:12]}) is in {config.dest_table} already"
            elif rejected:
                note = f"{rejected} row(s) quarantined in {config.rejected_table}"
            return FileResult(
                claim.file_hash, path, "committed", written.rows_written, None, claim.attempts,
                time.monotonic() - started, rows_rejected=rejected, note=note,
            )
        except FiledgeError as exc:
            error = exc
        except Exception as exc:  # an unforeseen failure is retried like a transient one
            error = TransientError(f"internal error: {type(exc).__name__}: {exc}")
    outcome = settle(audit, claim, error, config.retry_cap)
    retryable = error.outcome is not FileOutcome.TERMINAL and claim.attempts < config.retry_cap
    return FileResult(
        claim.file_hash, path, outcome, 0, str(error), claim.attempts, time.monotonic() - started, retryable
    )


def settle(audit: AuditStore, claim: Claim, exc: FiledgeError, retry_cap: int) -> str:
    """Record a failed attempt as its error class says; return the outcome name."""
    if exc.outcome is FileOutcome.FENCED:
        return "fenced"
    if exc.outcome is FileOutcome.RELEASE:
        audit.release(claim, str(exc), retry_cap)
        return "released"
    audit.fail(claim, str(exc), _FAIL_KIND[exc.outcome])
    return "failed"


@dataclass(frozen=True)
class ScannedFile:
    """A candidate and its content hash."""

    candidate: Candidate
    file_hash: str


def scan_directory(
    directory: str | os.PathLike[str], config: PipelineConfig, summary: RunSummary, audit: AuditStore | None = None
) -> list[ScannedFile]:
    """Hash every candidate file (through the audit's stat cache when given); unreadable files
    become warnings and failures."""
    cache = audit.cached_hashes(config.name) if audit is not None else {}
    fresh: list[tuple[str, tuple[int, int, int, int], str]] = []
    settled_before_ns = time.time_ns() - STAT_CACHE_SETTLE_NS
    scanned = []
    for candidate in list_candidates(directory, config.include, config.exclude):
        key = str(candidate.path)
        cached = cache.get(key)
        if cached is not None and cached[0] == candidate.fingerprint:
            scanned.append(ScannedFile(candidate, cached[1]))
            continue
        try:
            file_hash = hash_file(candidate.path)
        except FileNotFoundError:
            continue  # removed since it was listed: nothing to load
        except OSError as exc:
            summary.failed += 1
            summary.warnings.append(f"{candidate.path}: cannot read: {exc.strerror or exc}")
            continue
        scanned.append(ScannedFile(candidate, file_hash))
        if max(candidate.mtime_ns, candidate.ctime_ns) < settled_before_ns:
            fresh.append((key, candidate.fingerprint, file_hash))
    if audit is not None:
        audit.remember_hashes(config.name, fresh)
    return scanned


@dataclass(frozen=True)
class WorkItem:
    """A file that needs work: its hash and the path it was found at in this scan."""

    file_hash: str
    path: str


@dataclass
class RunPlan:
    """What a scan found: the counters so far, the files that need work, every hash seen."""

    summary: RunSummary
    items: list[WorkItem]
    seen: list[str]


def plan_run(config: PipelineConfig, directory: str | os.PathLike[str], audit: AuditStore) -> RunPlan:
    """Scan, reclaim stale leases, register new hashes; return the files that need work."""
    summary = RunSummary()
    audit.ensure_schema()
    scanned = scan_directory(directory, config, summary, audit)

    reclaimed = audit.reclaim_stale(config.name, config.stale_timeout_seconds, config.retry_cap)
    summary.reclaimed = reclaimed.pending
    failed_now = set(reclaimed.lost) | set(reclaimed.exhausted)
    for file_hash in reclaimed.lost:
        summary.warnings.append(f"{file_hash[:12]}: FAILED: its worker was lost {config.retry_cap} times")
    for file_hash in reclaimed.exhausted:
        summary.warnings.append(f"{file_hash[:12]}: FAILED: retry_cap ({config.retry_cap}) reached")
    summary.failed += len(failed_now)

    by_hash: dict[str, list[ScannedFile]] = {}
    for item in scanned:
        by_hash.setdefault(item.file_hash, []).append(item)
    first_seen = [(h, str(items[0].candidate.path), items[0].candidate.size) for h, items in by_hash.items()]
    summary.new = len(audit.register_many(config.name, first_seen, config.config_hash))

    known = audit.rows_for(config.name, list(by_hash))
    todo = []
    for file_hash, items in by_hash.items():
        row = known.get(file_hash)
        path = str(items[0].candidate.path)
        if file_hash in failed_now:
            summary.skipped += len(items) - 1  # counted as failed above
        elif row is not None and row.claimable(config.retry_cap):
            if row.path != path and not os.path.exists(row.path):
                audit.relocate(config.name, file_hash, row.path, path)  # moved or renamed
            todo.append(WorkItem(file_hash, path))
            summary.skipped += len(items) - 1  # the same bytes under other names
        else:
            summary.skipped += len(items)
            if row is not None and row.state == FileState.FAILED.value:
                summary.warnings.append(
                    f"{items[0].candidate.path}: FAILED after {row.attempts} attempt(s), needs "
                    f"`filedge requeue --hash {file_hash[:12]}`: {row.last_error}"
                )
    return RunPlan(summary, todo, list(by_hash))


def work(
    config: PipelineConfig,
    items: list[WorkItem],
    audit: AuditStore,
    summary: RunSummary,
    worker: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> RunSummary:
    """Claim and load each item that no other worker holds; add the outcomes to ``summary``."""
    worker = worker or worker_id()
    connector = open_connector(config)
    try:
        connector.prepare()  # before any claim: a bad destination charges no file
        config_hash = config.config_hash
        for item in items:
            claim = audit.claim(config.name, item.file_hash, worker, config.retry_cap, config_hash)
            if claim is None:  # another worker got there first
                summary.skipped += 1
                continue
            if claim.previous_state == FileState.FAILED.value:
                summary.retried += 1
            result = process_claim(claim, item.path, config, audit, connector)
            summary.add(result)
            if on_result:
                on_result(result)
    finally:
        connector.close()
    return summary


def process_file(
    config: PipelineConfig,
    file_hash: str,
    audit: AuditStore,
    connector: Connector,
    worker: str | None = None,
) -> FileResult:
    """Load one registered file by its hash if it needs work (the Dagster asset's entry point).

    ``connector`` must be prepared. A COMMITTED file is a no-op; anything else is claimed and
    loaded exactly as ``filedge run`` does."""
    claim = audit.claim(config.name, file_hash, worker or worker_id(), config.retry_cap, config.config_hash)
    if claim is not None:
        return process_claim(claim, claim.path, config, audit, connector)
    row = audit.get(config.name, file_hash)
    if row is None:
        return FileResult(file_hash, "", "failed", error=f"{file_hash[:12]}: not registered in the audit table")
    if row.state == FileState.COMMITTED.value:
        return FileResult(file_hash, row.path, "already_committed", row.rows_written or 0, None, row.attempts)
    if row.state == FileState.PROCESSING.value:
        return FileResult(
            file_hash, row.path, "busy", 0, f"another worker ({row.claimed_by}) holds the lease", row.attempts, 0.0, True
        )
    reason = row.last_error or f"not claimable in state {row.state}"
    return FileResult(file_hash, row.path, "failed", 0, f"{reason} (after {row.attempts} attempt(s))", row.attempts)


def run_pipeline(
    config: PipelineConfig,
    directory: str | os.PathLike[str],
    audit: AuditStore,
    worker: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> RunSummary:
    """One pass over ``directory``: every file that needs work is claimed and loaded once."""
    plan = plan_run(config, directory, audit)
    if plan.items:
        work(config, plan.items, audit, plan.summary, worker, on_result)
    return plan.summary


__all__ = [
    "FileResult",
    "RunPlan",
    "WorkItem",
    "plan_run",
    "work",
    "Heartbeat",
    "RunSummary",
    "process_claim",
    "process_file",
    "run_pipeline",
    "scan_directory",
    "settle",
    "worker_id",
]
