"""The ingesting asset: materializing a partition (a file hash) or a range of them runs the
core's ``process_file`` for each file — the same claim/write/commit as ``filedge run``."""


import os
import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from filedge_core import (
    AuditStore,
    FiledgeError,
    FileResult,
    PipelineEntry,
    file_report,
    open_connector,
    process_file,
)

from .partitions import file_partitions, safe_name
from .resources import FiledgeResource

DONE = ("committed", "already_committed")


def asset_key(pipeline: str) -> dg.AssetKey:
    return dg.AssetKey(["filedge", safe_name(pipeline)])


def _metadata(result: FileResult, entry: PipelineEntry, audit: AuditStore) -> dict[str, Any]:
    """A materialization's metadata: the file's outcome, and its audit row's config hash and
    attempt history as `filedge show` prints them (every attempt, by any run or `filedge run`)."""
    try:
        report = file_report(audit, result.file_hash, entry.config.name)
        config_hash, history = report.row.config_hash or "", "\n".join(report.history_lines())
    except FiledgeError as exc:  # the file is committed: a failed read of its history must not fail the run
        config_hash, history = "", f"history: not read ({exc})"
    return {
        "path": dg.MetadataValue.path(result.path) if result.path else "",
        "rows_written": result.rows_written,
        "rows_rejected": result.rows_rejected,
        "dest_table": entry.config.dest_table,
        "attempts": result.attempts,
        "duration_s": round(result.duration_s, 3),
        "outcome": result.outcome,
        "config_hash": config_hash,
        "history": dg.MetadataValue.md(f"```\n{history}\n```"),
        **({"note": result.note} if result.note else {}),
    }


def build_ingest_asset(entry: PipelineEntry) -> dg.AssetsDefinition:
    """The partitioned asset of one pipeline."""
    name = entry.name
    retry_cap = entry.config.retry_cap
    with warnings.catch_warnings():
        # single-run backfills are what make one run cover many files; Dagster marks the
        # parameter beta, and says so at every import of this module otherwise.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build(entry, name, retry_cap)


def _build(entry: PipelineEntry, name: str, retry_cap: int) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(name),
        partitions_def=file_partitions(name),
        backfill_policy=dg.BackfillPolicy.single_run(),
        # Step retries for transient errors. The audit's attempt count stays the truth: a file
        # that used retry_cap attempts is not claimed again, whatever Dagster retries.
        retry_policy=dg.RetryPolicy(max_retries=retry_cap, delay=2, backoff=dg.Backoff.EXPONENTIAL),
        group_name="filedge",
        kinds={"filedge", entry.config.connector.type},
        description=f"Files of {entry.directory} loaded into {entry.config.dest_table} exactly once "
        f"(pipeline {name!r}); one partition per file content hash.",
        metadata={"dest_table": entry.config.dest_table, "directory": str(entry.directory)},
        # The body reports each file's materialization itself, as soon as the file is done, so
        # files committed before a crash or a failure are shown as materialized.
        output_required=False,
    )
    def ingest(context: dg.AssetExecutionContext, filedge: FiledgeResource) -> Iterator[dg.AssetMaterialization]:
        pipeline = filedge.pipeline(name)
        config = pipeline.config
        audit = filedge.audit(name)
        audit.reclaim_stale(config.name, config.stale_timeout_seconds, config.retry_cap)
        parent = context.run.tags.get("dagster/parent_run_id")
        if parent:
            # This run retries a run that failed (e.g. its process crashed): the leases that run
            # still holds are dead, whatever their age. A live holder would be fenced anyway.
            parent_run = context.instance.get_run_by_id(parent)
            if parent_run is not None and parent_run.status == dg.DagsterRunStatus.FAILURE:
                audit.reclaim_worker(config.name, f"dagster:{parent[:8]}:", config.retry_cap)
        worker = f"dagster:{context.run.run_id[:8]}:{os.getpid()}"
        connector = open_connector(config)
        failed: list[FileResult] = []
        try:
            connector.prepare()
            for key in context.partition_keys:
                result = process_file(config, key, audit, connector, worker)
                if result.outcome in DONE:
                    yield dg.AssetMaterialization(
                        asset_key=context.asset_key, partition=key, metadata=_metadata(result, pipeline, audit)
                    )
                else:
                    failed.append(result)
                    if result.outcome == "given_back":  # the destination is unreachable
                        break
        finally:
            connector.close()
        if not failed:
            return
        reasons = "\n".join(f"{r.file_hash[:12]} {r.path}: {r.outcome}: {r.error}" for r in failed)
        raise dg.Failure(
            description=f"{len(failed)} of {len(context.partition_keys)} file(s) not loaded:\n{reasons}",
            metadata={"failed_files": [r.file_hash for r in failed], "reasons": reasons},
            allow_retries=any(r.retryable for r in failed),
        )

    return ingest
