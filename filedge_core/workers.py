"""``filedge run --workers N``: N worker processes sharing one audit table.

The parent scans, reclaims and registers once, checks the destination, then starts N processes
that each walk the whole work list from a different starting point and claim what is still free.
The audit table is the only coordination: a worker that dies leaves a lease that any later run
reclaims, exactly as with separate ``filedge run`` processes on separate machines."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

from .audit import AuditStore
from .config import PipelineConfig
from .connectors import open_connector
from .runner import FileResult, RunPlan, RunSummary, WorkItem, plan_run, work, worker_id
from .shutdown import DEFAULT_GRACE_SECONDS, SHUTDOWN, Interrupted, disarm, install, reclaim_sigint

_POLL_S = 0.2
_PROGRESS_EVERY_S = 0.5


def _worker_main(config: PipelineConfig, audit_url: str, items: list[WorkItem], out: Any, grace: float) -> None:
    """Body of one worker process: report each file's result, then the counters.

    In a session of its own, so a Ctrl-C at the terminal reaches only the parent, which
    forwards it: one signal, one grace period, in every process."""
    os.setsid()
    install(grace)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    audit = AuditStore(audit_url)
    summary = RunSummary()
    sent = [0.0]

    def progress(file_hash: str, records: int) -> None:
        # At most a few messages a second: a run of small files would otherwise send one per file.
        now = time.monotonic()
        if now - sent[0] >= _PROGRESS_EVERY_S:
            sent[0] = now
            out.put(("progress", file_hash, records))

    try:
        work(
            config, items, audit, summary, worker_id(),
            on_result=lambda r: out.put(("result", r)), on_start=lambda i: out.put(("start", i)),
            on_progress=progress,
        )
        disarm()
        out.put(("done", summary.retried, summary.warnings))
    except Exception as exc:  # reported by the parent as this worker's failure
        out.put(("error", getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"))
    finally:
        audit.dispose()


def _signal_all(procs: list[Any], signum: int) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass


def rotate(items: list[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The work list starting at worker ``index``'s share, so workers rarely race for a file."""
    start = (len(items) * index) // count
    return items[start:] + items[:start]


def run_parallel(
    config: PipelineConfig,
    directory: str | os.PathLike[str],
    audit_url: str,
    workers: int,
    on_result: Callable[[FileResult], None] | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
    on_plan: Callable[[RunPlan], None] | None = None,
    on_start: Callable[[WorkItem], None] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> RunSummary:
    """Like ``run_pipeline`` with ``workers`` processes; returns one merged summary.

    A stop asked of this process (``shutdown.SHUTDOWN``) is forwarded to the workers; when
    this process's own grace period ends, they are told to stop at once."""
    audit = AuditStore(audit_url)
    try:
        plan = plan_run(config, directory, audit)
        summary, items = plan.summary, plan.items
    finally:
        audit.dispose()
    if on_plan:
        on_plan(plan)
    if not items:
        return summary
    if SHUTDOWN.requested:  # stopped while scanning: start no worker
        summary.leave(len(items))
        return summary
    connector = open_connector(config)
    reclaim_sigint()  # polars is loaded now
    try:
        connector.prepare()  # a bad destination stops the run before any worker claims
    finally:
        connector.close()

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main, args=(config, audit_url, rotate(items, k, workers), out, grace), daemon=True
        )
        for k in range(workers)
    ]
    # A stop forwarded to a worker before it has installed its handlers would kill it: the
    # workers start with SIGTERM and SIGINT blocked (the mask survives exec) and unblock them
    # once their handlers are in place; a signal sent meanwhile waits for them.
    stops = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        for proc in procs:
            proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    finished = 0
    processed: set[str] = set()
    forwarded = False
    while finished < workers:
        if SHUTDOWN.requested and not forwarded:
            _signal_all(procs, SHUTDOWN.signal or signal.SIGTERM)
            forwarded = True
        try:
            kind, *payload = out.get(timeout=_POLL_S)
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and out.empty():
                break
            continue
        except Interrupted:  # this process's grace period is over: the workers stop now too
            _signal_all(procs, signal.SIGTERM)
            continue
        if kind == "result":
            result: FileResult = payload[0]
            processed.add(result.file_hash)
            summary.add(result)
            if on_result:
                on_result(result)
        elif kind == "start":
            if on_start:
                on_start(payload[0])
        elif kind == "progress":
            if on_progress:
                on_progress(payload[0], payload[1])
        elif kind == "done":
            finished += 1
            summary.retried += payload[0]
            # The worker's own warnings repeat the fenced results already added above.
            summary.warnings.extend(w for w in payload[1] if w not in summary.warnings)
        else:
            finished += 1
            summary.failed += 1
            summary.warnings.append(f"a worker stopped: {payload[0]}")
    disarm()
    for index, proc in enumerate(procs):
        proc.join()
        if proc.exitcode:
            summary.failed += 1
            summary.warnings.append(
                f"worker {index + 1} exited with code {proc.exitcode}; a file it held is reclaimed "
                f"after stale_timeout_minutes ({config.stale_timeout_minutes:g})"
            )
    # Files no worker processed were taken by another process: they needed no work from this run.
    summary.skipped += len({i.file_hash for i in items} - processed)
    return summary
