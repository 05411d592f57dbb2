"""The ``filedge`` command: thin commands over the core; errors become one line and an exit code.

Heavy modules (polars, SQLAlchemy) are imported inside the commands that need them, so
``filedge --help`` and ``filedge status`` start fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from .errors import FiledgeError

DEFAULT_AUDIT_URL = "sqlite:///filedge.db"
F = TypeVar("F", bound=Callable[..., Any])


def one_line(text: str) -> str:
    """A message as one line, whatever file content found its way into it."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _fail(message: str, code: int) -> None:
    from .dburl import mask

    click.echo(f"filedge: error: {one_line(mask(message))}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn filedge's errors into one line on stderr and the error's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FiledgeError as exc:
            _fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # the last line of defence: no traceback for users
            if os.environ.get("FILEDGE_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set FILEDGE_DEBUG=1 for a traceback)", 1)
        except BaseException as exc:  # a stop whose grace period ended outside a file's load
            from .shutdown import SHUTDOWN, Interrupted

            if not isinstance(exc, Interrupted):
                raise
            _fail(f"interrupted: {exc}", SHUTDOWN.exit_code or 130)

    return wrapper  # type: ignore[return-value]


audit_option = click.option(
    "--audit-db-url",
    envvar="FILEDGE_AUDIT_DB_URL",
    default=DEFAULT_AUDIT_URL,
    show_default=True,
    metavar="URL",
    help="Audit database (sqlite:///file.db or postgresql://...). Env: FILEDGE_AUDIT_DB_URL.",
)
pipeline_option = click.option("--pipeline", metavar="NAME", help="Only this pipeline's files.")


def _audit(url: str) -> Any:
    from .audit import AuditStore

    store = AuditStore(url)
    store.ensure_schema()
    return store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filedge", prog_name="filedge")
def main() -> None:
    """Load files into database tables exactly once, tracked by content hash."""


@main.command()
@click.option("--dir", "directory", required=True, metavar="DIR", help="Directory whose files are loaded.")
@click.option("--config", "config_path", required=True, metavar="FILE", help="Pipeline YAML file.")
@audit_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes sharing the audit table (one summary line for all).",
)
@click.option(
    "--grace",
    "grace",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM/SIGINT: how long the file being loaded may take to finish before its lease is given back.",
)
@click.option("--watch", is_flag=True, help="Keep scanning and loading until SIGTERM/SIGINT (a service's entry point).")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: the pause between two scans.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no warnings; errors and the summary only.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as a JSON object with every file's outcome (one per scan with --watch).",
)
@handle_errors
def run(
    directory: str,
    config_path: str,
    audit_db_url: str,
    workers: int,
    grace: float,
    watch: bool,
    interval: float,
    quiet: bool,
    as_json: bool,
) -> None:
    """Load every new file in DIR once; reclaim stale leases; retry failed files.

    Prints `Committed: N Failed: N Skipped: N New: N Reclaimed: N Retried: N`. Exit code 0 when
    every file is committed or needed no work, 1 when any file failed (or the destination
    became unreachable), 2 for usage or configuration errors. SIGTERM or SIGINT stops claiming
    files; the file being loaded gets --grace seconds, then its lease is given back without
    charging an attempt; the summary is printed and the exit code is 143 (SIGTERM) or 130
    (SIGINT).

    On a terminal a progress bar shows files, rows, throughput and the file being loaded;
    otherwise a progress line is printed every 10 seconds (stderr).

    With --watch the scan repeats every --interval seconds; a summary is printed for each scan
    that did something; a database that cannot be reached is a warning and the next scan tries
    again; SIGTERM/SIGINT ends it with exit code 0 once the file being loaded is settled."""
    from .shutdown import SHUTDOWN, disarm, install

    install(grace)
    from .config import load_pipeline
    from .runner import FileResult

    config = load_pipeline(config_path)

    def report(result: FileResult) -> None:
        # Fenced, interrupted and given-back files are warnings of the summary, not errors.
        if result.outcome in ("failed", "released"):
            click.echo(
                one_line(f"filedge: {result.outcome.upper()} {result.path} ({result.file_hash[:12]}): {result.error}"),
                err=True,
            )

    shown: set[str] = set()

    def show(summary: Any, line: bool = True) -> None:
        if not quiet:
            for warning in summary.warnings:
                if warning not in shown:
                    click.echo(one_line(f"filedge: warning: {warning}"), err=True)
                if watch:  # a FAILED file is announced once, not at every scan
                    if len(shown) > 100_000:
                        shown.clear()
                    shown.add(warning)
        if line:
            click.echo(json.dumps(summary.as_dict()) if as_json else summary.line())

    from .shutdown import Interrupted

    stores: list[Any] = []  # the audit store of --workers 1, opened by the first scan that can
    try:
        while True:
            try:
                summary = _run_once(config, directory, stores, audit_db_url, workers, grace, report, quiet, watch)
            except Interrupted:
                if not watch:
                    raise
                summary = None  # the grace period ended outside a file (a long scan): stop now
            if not watch:
                disarm()
                show(summary)
                sys.exit(SHUTDOWN.exit_code or summary.exit_code)
            if summary is not None:  # a summary line only for a scan that did something
                show(summary, line=summary.eventful or SHUTDOWN.requested)
            if SHUTDOWN.requested or SHUTDOWN.wait(interval):
                disarm()
                sys.exit(0)
    finally:
        for store in stores:
            store.dispose()


def _run_once(
    config: Any,
    directory: str,
    stores: list[Any],
    audit_db_url: str,
    workers: int,
    grace: float,
    report: Callable[[Any], None],
    quiet: bool,
    watch: bool,
) -> Any:
    """One scan and load, with the progress display; under --watch a database that cannot be
    reached is a warning (None is returned) rather than the end."""
    from .errors import DatabaseUnavailable
    from .progress import Progress

    progress = Progress.for_stream(quiet)
    reading = None if progress.mode == "off" else progress.progress

    def result(r: Any) -> None:
        progress.result(r)
        report(r)

    try:
        if workers > 1:
            from .workers import run_parallel

            return run_parallel(
                config, directory, audit_db_url, workers, on_result=result, grace=grace,
                on_plan=progress.plan, on_start=progress.start, on_progress=reading,
            )
        from .runner import run_pipeline

        if not stores:
            stores.append(_audit(audit_db_url))
        return run_pipeline(
            config, directory, stores[0], on_result=result, on_plan=progress.plan, on_start=progress.start,
            on_progress=reading,
        )
    except DatabaseUnavailable as exc:
        if not watch:
            raise
        progress.close()  # before the warning: the live line must not be left half drawn
        from .dburl import mask

        click.echo(one_line(f"filedge: warning: {mask(exc.message)}; trying again at the next scan"), err=True)
        return None
    finally:
        progress.close()


@main.command()
@audit_option
@pipeline_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of lines.")
@handle_errors
def status(audit_db_url: str, pipeline: str | None, as_json: bool) -> None:
    """Count files in each state: PENDING, PROCESSING, COMMITTED, FAILED."""
    counts = _audit(audit_db_url).counts(pipeline)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        for state, count in counts.items():
            click.echo(f"{state}: {count}")


@main.command()
@audit_option
@pipeline_option
@click.option("--hash", "hashes", multiple=True, metavar="H", help="A FAILED file's hash (or unique prefix). Repeatable.")
@click.option("--all", "all_failed", is_flag=True, help="Every FAILED file.")
@handle_errors
def requeue(audit_db_url: str, pipeline: str | None, hashes: tuple[str, ...], all_failed: bool) -> None:
    """Reset FAILED files to PENDING with attempts 0, so the next run loads them.

    PROCESSING and COMMITTED files are never touched."""
    from .errors import UsageError

    if bool(hashes) == all_failed:
        raise UsageError("requeue: give --hash H (one or more) or --all")
    audit = _audit(audit_db_url)
    targets = None if all_failed else audit.resolve_hashes(hashes, pipeline)
    count = audit.requeue(targets, pipeline)
    if targets is not None and count < len(set(targets)):
        click.echo(f"filedge: warning: {len(set(targets)) - count} file(s) were not FAILED and were left as they are", err=True)
    click.echo(f"Requeued: {count}")


@main.command(name="list")
@audit_option
@pipeline_option
@click.option(
    "--state",
    type=click.Choice(["PENDING", "PROCESSING", "COMMITTED", "FAILED"], case_sensitive=False),
    help="Only files in this state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines with every audit column.")
@handle_errors
def list_files(audit_db_url: str, pipeline: str | None, state: str | None, as_json: bool) -> None:
    """One line per file: short hash, path, state, attempts, rows (and rows rejected), last error."""
    rows = _audit(audit_db_url).rows(pipeline=pipeline, state=state.upper() if state else None)
    for row in rows:
        if as_json:
            data = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.__dict__.items()}
            click.echo(json.dumps(data))
            continue
        rows_text = "-" if row.rows_written is None else str(row.rows_written)
        if row.rows_rejected:
            rows_text += f"  rejected={row.rows_rejected}"
        error = f"  {row.last_error}" if row.last_error else ""
        click.echo(f"{row.file_hash[:12]}  {row.path}  {row.state}  attempts={row.attempts}  rows={rows_text}{error}")


@main.command()
@click.argument("prefix", metavar="HASH")
@audit_option
@pipeline_option
@click.option(
    "--config", "config_path", metavar="FILE",
    help="The pipeline's YAML file: also count the file's rows in its destination (read only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def show(prefix: str, audit_db_url: str, pipeline: str | None, config_path: str | None, as_json: bool) -> None:
    """Everything known about one file: its audit row, every attempt, where its rows are.

    HASH is the file's content hash or a unique prefix of it. Each attempt shows when it
    started, its worker, its outcome, how long it took, its rows and its error. Exit 1 if
    --config was given and the destination could not be read."""
    from .report import file_report

    config = None
    if config_path is not None:
        from .config import load_pipeline

        config = load_pipeline(config_path)
    report = file_report(_audit(audit_db_url), prefix, pipeline, config)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for line in report.lines():
            click.echo(one_line(line))
    sys.exit(1 if report.destination is not None and report.destination.error else 0)


@main.command()
@audit_option
@pipeline_option
@click.option(
    "--older-than", "days", type=click.FloatRange(min=0), required=True, metavar="DAYS",
    help="Delete the attempts that ended more than DAYS ago (fractions allowed; 0: every ended attempt).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@handle_errors
def prune(audit_db_url: str, pipeline: str | None, days: float, dry_run: bool) -> None:
    """Delete old attempt history (etl_file_attempts); prints `Pruned: N attempt(s)`.

    Audit rows are never deleted: a committed file stays committed, and is skipped by every
    later run. Attempts still running are kept."""
    import math

    from .errors import UsageError

    if not math.isfinite(days):
        raise UsageError(f"--older-than: {days} is not a number of days")
    count = _audit(audit_db_url).prune_attempts(days, pipeline, dry_run=dry_run)
    click.echo(f"{'Would prune' if dry_run else 'Pruned'}: {count} attempt(s)")


@main.command()
@click.option("--config", "config_path", required=True, metavar="FILE", help="Pipeline YAML file.")
@click.option("--dir", "directory", metavar="DIR", help="Also parse and validate every file in DIR (nothing is written).")
@handle_errors
def validate(config_path: str, directory: str | None) -> None:
    """Check a pipeline configuration; with --dir, dry-run every file through the reader.

    Prints what the configuration resolves to, then one line per file: `OK <file> <rows> rows`
    or `FAILED <file>: <reason>`. Exit 1 if any file would fail. Nothing is written anywhere."""
    from .config import load_pipeline
    from .dburl import mask

    config = load_pipeline(config_path)
    click.echo(
        f"OK: pipeline {config.name!r}: {config.format} -> {config.connector.type} "
        f"{mask(config.connector.url)} table {config.dest_table!r}, {len(config.columns)} column(s), "
        f"write_mode {config.write_mode}, retry_cap {config.retry_cap}, "
        f"stale_timeout_minutes {config.stale_timeout_minutes:g}"
    )
    if directory is None:
        return
    from .batches import FileBatches
    from .errors import FiledgeError
    from .scan import list_candidates
    from .source import open_snapshot

    failed = 0
    for candidate in list_candidates(directory, config.include, config.exclude):
        try:
            with open_snapshot(candidate.path, None) as snapshot:
                batches = FileBatches(snapshot, config)
                for _ in batches:
                    pass
        except FiledgeError as exc:
            failed += 1
            click.echo(f"FAILED {candidate.name}: {exc}")
        else:
            rejected = f", {batches.rows_rejected} rejected" if batches.rows_rejected else ""
            click.echo(f"OK {candidate.name} {batches.rows_written} rows{rejected}")
    sys.exit(1 if failed else 0)


VERIFY_INCOMPLETE = 3  # verify could not read a database: nothing was concluded


@main.command()
@click.option("--config", "config_path", required=True, metavar="FILE", help="Pipeline YAML file.")
@audit_option
@click.option("--fix", is_flag=True, help="Requeue the files whose reload repairs a disagreement (never deletes rows).")
@click.option("--dir", "directory", metavar="DIR", help="With --fix: requeue only files whose bytes are in DIR (default: at their recorded path).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@handle_errors
def verify(config_path: str, audit_db_url: str, fix: bool, directory: str | None, as_json: bool) -> None:
    """Reconcile the audit table, the destination's ledger and its rows per file.

    One line per disagreement (and per file whose rows the next run rewrites), then
    `Checked: N files; disagreements: M; pending rewrite: P`. Exit 0 when everything agrees,
    1 when any disagreement was found (with --fix too), 2 for usage or configuration errors,
    3 when a database could not be read. See docs/verify.md."""
    from .config import load_pipeline
    from .verify import open_audit, verify_pipeline

    config = load_pipeline(config_path)
    try:
        audit = open_audit(audit_db_url)
        try:
            report = verify_pipeline(config, audit, fix=fix, directory=directory)
        finally:
            audit.dispose()
    except FiledgeError as exc:
        if exc.exit_code != 1:
            raise
        _fail(exc.message, VERIFY_INCOMPLETE)  # 1 would read as "disagreements found"
        return
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for line in [f.line() for f in report.findings] + [r.line() for r in report.repairs or []]:
            click.echo(one_line(line))
        click.echo(report.summary())
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
