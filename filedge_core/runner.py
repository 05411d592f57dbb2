"""The one ingestion path: scan -> register -> claim -> read/validate -> write -> commit.

The command line and the Dagster asset both call these functions; neither re-implements a step."""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .audit import AuditStore, Claim, ErrorKind, FileState, snapshot_order
from .config import PipelineConfig
from .errors import DatabaseUnavailable, FiledgeError, FileOutcome, LeaseLost, TransientError
from .faults import checkpoint
from .scan import SETTLE_NS, Candidate, Fingerprint, hash_file, list_candidates
from .shutdown import SHUTDOWN, Interrupted, reclaim_sigint

if TYPE_CHECKING:
    from .connectors import Connector

# Reading and writing import polars and the database drivers: only when a file needs work, so
# that a run over files that are all committed starts fast.

# A file changed within this window is hashed on every scan until it has settled (scan.SETTLE_NS).
STAT_CACHE_SETTLE_NS = SETTLE_NS

# Where each error class sends the file's audit row: the one place this is decided.
_FAIL_KIND = {FileOutcome.TERMINAL: ErrorKind.DATA, FileOutcome.RETRY: ErrorKind.TRANSIENT}


def claimer(audit: AuditStore, config: PipelineConfig, worker: str) -> Callable[[str], Claim | None]:
    """Claims files of ``config`` by hash for ``worker``; each attempt records the config hash and
    the destination (the hash is computed once: it costs more than a small file's claim)."""
    name, retry_cap, config_hash = config.name, config.retry_cap, config.config_hash
    dest_table, dest_url = config.dest_table, config.connector.url

    def claim(file_hash: str) -> Claim | None:
        return audit.claim(name, file_hash, worker, retry_cap, config_hash, dest_table, dest_url)

    return claim


def worker_id() -> str:
    """This process's identity in ``claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    ``outcome``: ``committed`` (by this call), ``already_committed`` (nothing to do), ``failed``,
    ``released`` (the file changed while read), ``fenced`` (another worker's newer claim won),
    ``busy`` (another worker holds a live lease), ``interrupted`` (the run was stopped; the lease
    was given back without charging the attempt), ``given_back`` (the destination could not be
    reached: not the file's fault, so the lease was given back uncharged and the run stops).
    ``retryable``: a later attempt may succeed.
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
    stopped_by: str | None = None  # why the run stopped claiming before its list was done

    def line(self) -> str:
        return (
            f"Committed: {self.committed} Failed: {self.failed} Skipped: {self.skipped} "
            f"New: {self.new} Reclaimed: {self.reclaimed} Retried: {self.retried}"
        )

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped_by else 0

    @property
    def eventful(self) -> bool:
        """Whether anything happened beyond skipping files that needed no work."""
        return bool(self.committed or self.failed or self.new or self.reclaimed or self.retried or self.stopped_by)

    def as_dict(self) -> dict[str, object]:
        """The counters, warnings and every claimed file's result, for ``--json``."""
        return {
            "committed": self.committed,
            "failed": self.failed,
            "skipped": self.skipped,
            "new": self.new,
            "reclaimed": self.reclaimed,
            "retried": self.retried,
            "stopped_by": self.stopped_by,
            "warnings": self.warnings,
            "files": [
                {
                    "file_hash": r.file_hash,
                    "path": r.path,
                    "outcome": r.outcome,
                    "rows_written": r.rows_written,
                    "rows_rejected": r.rows_rejected,
                    "attempts": r.attempts,
                    "duration_s": round(r.duration_s, 6),
                    "error": r.error,
                    "note": r.note,
                }
                for r in self.results
            ],
        }

    def leave(self, count: int, why: str = "stopping:") -> None:
        """Count ``count`` files this run will not load (the next run does), saying why."""
        self.skipped += count
        self.warnings.append(f"{why} {count} file(s) left for the next run")

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
        elif result.outcome in ("interrupted", "given_back"):
            self.skipped += 1  # given back uncharged: the next run loads it
            self.warnings.append(f"{result.path}: {result.error}")
            if result.outcome == "given_back":
                self.stopped_by = result.error
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
    return snapshot_order(claim.registered_at, claim.path)


def process_claim(
    claim: Claim,
    path: str,
    config: PipelineConfig,
    audit: AuditStore,
    connector: Connector,
    on_progress: Callable[[str, int], None] | None = None,
    caught_up: bool = False,
) -> FileResult:
    """Load one claimed file and settle its audit row. Never raises for the file's own problems.

    The file is read in batches inside the destination transaction (``FileBatches``): the
    bytes are hashed as they are parsed, and the transaction cannot commit unless they are
    the claimed bytes. ``on_progress(file_hash, records)`` is told, before each batch is
    written, how many records of the file have been read so far. A write refused because the
    audit row is younger than the destination's ledger is claimed again once with a raised
    token (``AuditStore.catch_up``; ``caught_up``: this is that second claim)."""
    started = time.monotonic()
    loaded: FileResult | None = None
    error: FiledgeError | None = None
    fingerprint: Fingerprint | None = None
    opened_ns = 0
    with Heartbeat(audit, claim, heartbeat_interval(config)) as heartbeat:

        def still_ours() -> None:  # no need to write what the ledger would refuse
            if heartbeat.lost:
                raise LeaseLost("lease lost while the file was read; another worker owns it now")
            if on_progress is not None:
                on_progress(claim.file_hash, batches.records)

        try:
            from .batches import FileBatches
            from .connectors import FileWrite
            from .source import open_snapshot

            checkpoint("after_claim")
            with open_snapshot(path, claim.file_hash) as snapshot:
                batches = FileBatches(snapshot, config, check=still_ours)
                written = connector.write(
                    FileWrite(claim.pipeline, claim.file_hash, claim.token, batches, file_order(claim))
                )
                fingerprint, opened_ns = snapshot.fingerprint, snapshot.opened_ns
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
            loaded = FileResult(
                claim.file_hash, path, "committed", written.rows_written, None, claim.attempts,
                time.monotonic() - started, rows_rejected=rejected, note=note,
            )
        except FiledgeError as exc:
            error = exc
        except Exception as exc:  # an unforeseen failure is retried like a transient one
            error = TransientError(f"internal error: {type(exc).__name__}: {exc}")
        except (Interrupted, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt) and not SHUTDOWN.requested:
                _give_back_quietly(audit, claim)
                raise
            # The grace period is over (or a KeyboardInterrupt came after a stop was asked for,
            # which shutdown.reclaim_sigint() keeps polars from raising): the file did nothing wrong.
            reason = f"interrupted ({str(exc) or type(exc).__name__}); the lease was given back"
            audit.give_back(claim, reason)
            return FileResult(
                claim.file_hash, path, "interrupted", 0, reason, claim.attempts - 1, time.monotonic() - started, True
            )
        except BaseException:  # e.g. a Dagster run termination: give the lease back, then stop
            _give_back_quietly(audit, claim)
            raise
    if loaded is not None:
        return _clean_up_after_load(config, audit, loaded, fingerprint, opened_ns)
    assert error is not None
    if isinstance(error, LeaseLost) and error.ledger_token is not None and not caught_up:
        reason = f"{error}: the audit row is younger than the ledger; claim token raised to {error.ledger_token}"
        if audit.catch_up(claim, error.ledger_token, reason):
            again = claimer(audit, config, claim.worker)(claim.file_hash)
            if again is not None:
                return process_claim(again, path, config, audit, connector, on_progress, caught_up=True)
            taken = f"{reason}; another worker claimed it since"
            return FileResult(claim.file_hash, path, "fenced", 0, taken, claim.attempts - 1, time.monotonic() - started)
    outcome = settle(audit, claim, error, config.retry_cap)
    attempts = claim.attempts - 1 if outcome == "given_back" else claim.attempts
    retryable = error.outcome is not FileOutcome.TERMINAL and attempts < config.retry_cap
    return FileResult(claim.file_hash, path, outcome, 0, str(error), attempts, time.monotonic() - started, retryable)


def _clean_up_after_load(
    config: PipelineConfig,
    audit: AuditStore,
    loaded: FileResult,
    fingerprint: Fingerprint | None,
    opened_ns: int,
) -> FileResult:
    """``after_commit`` for a file this worker just committed. A stop that lands here skips the
    cleanup (the next scan does it): the file stays committed either way."""
    if fingerprint is None or not config.after_commit.cleans_up:
        return loaded
    try:
        moved_to, trouble = after_commit(config, audit, loaded.file_hash, loaded.path, fingerprint, opened_ns)
    except (Interrupted, KeyboardInterrupt):
        return loaded
    note = "; ".join(filter(None, [loaded.note, trouble])) or None
    return dataclasses.replace(loaded, path=moved_to or loaded.path, note=note)


def after_commit(
    config: PipelineConfig,
    audit: AuditStore,
    file_hash: str,
    path: str,
    fingerprint: Fingerprint,
    taken_ns: int,
) -> tuple[str | None, str | None]:
    """Clean up a file whose content is COMMITTED (``after_commit``); a moved file's audit row
    gets its new path. Returns the new path (if moved) and a warning (if it could not be done)."""
    from .cleanup import clean_up

    moved_to, trouble = clean_up(config, path, fingerprint, taken_ns, file_hash)
    if moved_to is not None:
        try:
            audit.relocate(config.name, file_hash, path, moved_to)
        except FiledgeError:
            pass  # only where `show` says the file is; the file itself is safe
    return moved_to, trouble


def _give_back_quietly(audit: AuditStore, claim: Claim) -> None:
    """Give the lease back on the way out of an interruption (if the audit cannot be reached,
    the stale timeout reclaims the file later)."""
    try:
        audit.give_back(claim, "interrupted; the lease was given back")
    except Exception:  # noqa: BLE001
        pass


def settle(audit: AuditStore, claim: Claim, exc: FiledgeError, retry_cap: int) -> str:
    """Record a failed attempt as its error class says; return the outcome name."""
    if exc.outcome is FileOutcome.FENCED:
        try:  # the reclaim that took the lease closed this attempt already; this adds why it ended
            audit.fenced(claim, str(exc))
        except FiledgeError:
            pass
        return "fenced"
    if exc.outcome is FileOutcome.RELEASE:
        audit.release(claim, str(exc), retry_cap)
        return "released"
    if exc.outcome is FileOutcome.GIVE_BACK:
        try:
            audit.give_back(claim, f"{exc}; the lease was given back")
        except DatabaseUnavailable:
            pass  # the audit database is away too: the lease goes stale and is reclaimed
        return "given_back"
    audit.fail(claim, str(exc), _FAIL_KIND[exc.outcome])
    return "failed"


class ScannedFile(NamedTuple):
    """A candidate and its content hash. ``cached``: the hash came from the stat cache (so it
    is registered); ``settled``: unchanged for long enough to be cached."""

    candidate: Candidate
    file_hash: str
    cached: bool = False
    settled: bool = False


def scan_directory(
    directory: str | os.PathLike[str], config: PipelineConfig, summary: RunSummary, audit: AuditStore | None = None
) -> list[ScannedFile]:
    """Hash every candidate file (through the audit's stat cache when given); unreadable files
    become warnings and failures. The cache is not written here: see ``plan_run``."""
    cache = audit.cached_hashes(config.name) if audit is not None else {}
    settled_before_ns = time.time_ns() - STAT_CACHE_SETTLE_NS
    scanned = []
    cached_file, lookup, append = ScannedFile, cache.get, scanned.append
    for candidate in list_candidates(directory, config.include, config.exclude):
        hit = lookup(candidate.location)
        if hit is not None and hit[0] == candidate[1:]:  # the fingerprint
            append(cached_file(candidate, hit[1], True))
            continue
        try:
            file_hash = hash_file(candidate.location)
        except FileNotFoundError:
            continue  # removed since it was listed: nothing to load
        except OSError as exc:
            summary.failed += 1
            summary.warnings.append(f"{candidate.location}: cannot read: {exc.strerror or exc}")
            continue
        settled = max(candidate.mtime_ns, candidate.ctime_ns) < settled_before_ns
        scanned.append(ScannedFile(candidate, file_hash, settled=settled))
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
    # A scan makes a few objects per file and frees none: the cyclic GC would walk them all
    # again and again (a third of a 100,000-file scan's time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _plan_run(config, directory, audit)
    finally:
        if gc_was_enabled:
            gc.enable()


def _plan_run(config: PipelineConfig, directory: str | os.PathLike[str], audit: AuditStore) -> RunPlan:
    summary = RunSummary()
    audit.ensure_schema()
    cleaning = config.after_commit.cleans_up
    if cleaning:
        from .cleanup import check_target, recover_private

        check_target(config, directory)
        recover_private(directory)
    scan_started_ns = time.time_ns()
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
        same = by_hash.get(item.file_hash)
        if same is None:
            by_hash[item.file_hash] = [item]
        else:
            same.append(item)
    # A cached hash is registered already (see AuditStore.cached_hashes): only the others are.
    first_seen = [
        (h, items[0].candidate.location, items[0].candidate.size)
        for h, items in by_hash.items()
        if not items[0].cached and not any(item.cached for item in items)
    ]
    summary.new = len(audit.register_many(config.name, first_seen, config.config_hash))
    # Cached only once registered: a cached hash never needs registering (a crash in between
    # leaves the file uncached, so it is hashed and registered again next time).
    audit.remember_hashes(
        config.name,
        [(i.candidate.location, i.candidate.fingerprint, i.file_hash) for i in scanned if i.settled and not i.cached],
    )

    open_rows = audit.open_rows(config.name)  # a hash without an open row is COMMITTED
    # Every file whose hash has no open row needs no work; only the others are looked at.
    summary.skipped += sum(len(items) for h, items in by_hash.items() if h not in open_rows)
    if cleaning:
        # Files whose content is COMMITTED but that are still here: a crash came between a
        # commit and its cleanup, or the same bytes were dropped in again under another name.
        # Only a row read as COMMITTED counts (a hash may have no row at all).
        rows = audit.rows_for(config.name, [h for h in by_hash if h not in open_rows])
        for file_hash, row in rows.items():
            if row.state != FileState.COMMITTED.value:
                continue
            for item in by_hash[file_hash]:
                candidate = item.candidate
                _, trouble = after_commit(config, audit, file_hash, candidate.location, candidate.fingerprint, scan_started_ns)
                if trouble:
                    summary.warnings.append(f"{candidate.location}: {trouble}")
    todo = []
    for file_hash, row in open_rows.items():
        items = by_hash.get(file_hash)
        if items is None:
            continue  # not in this directory now
        path = items[0].candidate.location
        if file_hash in failed_now:
            summary.skipped += len(items) - 1  # counted as failed above
        elif row.claimable(config.retry_cap):
            if row.path != path and not os.path.exists(row.path):
                audit.relocate(config.name, file_hash, row.path, path)  # moved or renamed
            todo.append(WorkItem(file_hash, path))
            summary.skipped += len(items) - 1  # the same bytes under other names
        else:
            summary.skipped += len(items)
            if row.state == FileState.FAILED.value:
                summary.warnings.append(
                    f"{path}: FAILED after {row.attempts} attempt(s), needs "
                    f"`filedge requeue --hash {file_hash[:12]}`: {row.last_error}"
                )
    todo.sort(key=lambda item: item.path)  # in name order, as the directory lists them
    return RunPlan(summary, todo, list(by_hash))


def work(
    config: PipelineConfig,
    items: list[WorkItem],
    audit: AuditStore,
    summary: RunSummary,
    worker: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    on_start: Callable[[WorkItem], None] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> RunSummary:
    """Claim and load each item that no other worker holds; add the outcomes to ``summary``.

    ``on_start`` is told of each file claimed, ``on_progress`` of the records read so far of
    the file being loaded (``process_claim``), ``on_result`` of each outcome."""
    from .connectors import open_connector

    worker = worker or worker_id()
    connector = open_connector(config)
    reclaim_sigint()  # polars is loaded now
    try:
        connector.prepare()  # before any claim: a bad destination charges no file
        claim_file = claimer(audit, config, worker)
        for index, item in enumerate(items):
            if SHUTDOWN.requested:  # stop claiming; what is left waits for the next run
                summary.leave(len(items) - index)
                break
            claim = claim_file(item.file_hash)
            if claim is None:  # another worker got there first
                summary.skipped += 1
                continue
            if claim.previous_state == FileState.FAILED.value:
                summary.retried += 1
            if on_start:
                on_start(item)
            result = process_claim(claim, item.path, config, audit, connector, on_progress)
            summary.add(result)
            if on_result:
                on_result(result)
            if result.outcome == "given_back":  # every other file would meet the same wall
                summary.leave(len(items) - index - 1, "the destination is unreachable: stopping;")
                break
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
    claim = claimer(audit, config, worker or worker_id())(file_hash)
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
    on_plan: Callable[[RunPlan], None] | None = None,
    on_start: Callable[[WorkItem], None] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> RunSummary:
    """One pass over ``directory``: every file that needs work is claimed and loaded once."""
    plan = plan_run(config, directory, audit)
    if on_plan:
        on_plan(plan)
    if plan.items:
        work(config, plan.items, audit, plan.summary, worker, on_result, on_start, on_progress)
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
