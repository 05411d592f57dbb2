"""What ``filedge run`` shows on stderr while it works.

On a terminal: click's progress bar (files done / total, ETA) followed by rows, throughput and
the file being loaded. Not on a terminal (a log, a pipe): a plain line at most every
``PLAIN_EVERY_S`` seconds, when a file finishes or a batch of a long file has been read, so a
run shows it is alive without a line per file. Rows count the records read so far of the files
being loaded. ``--quiet``: nothing. The summary line on stdout is never affected."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

import click

from .runner import FileResult, RunPlan, WorkItem

PLAIN_EVERY_S = float(os.environ.get("FILEDGE_TEST_PROGRESS_SECONDS", "10"))
TTY_EVERY_S = 0.2  # redraws of the bar between files


class Progress:
    """Counts files and rows as results arrive and shows them (``mode``: tty, plain or off)."""

    def __init__(self, mode: str, stream: IO[str] | None = None) -> None:
        self.mode = mode
        self.stream = stream or sys.stderr
        self.total = 0
        self.done = 0
        self.rows = 0
        self.reading: dict[str, int] = {}  # records read of each file being loaded
        self.current = ""
        self.started = time.monotonic()
        self.last_plain = self.started
        self.last_drawn = self.started
        self._bar: Any = None

    @classmethod
    def for_stream(cls, quiet: bool, stream: IO[str] | None = None) -> Progress:
        stream = stream or sys.stderr
        if quiet:
            return cls("off", stream)
        return cls("tty" if stream.isatty() else "plain", stream)

    def plan(self, plan: RunPlan) -> None:
        """The scan is done: ``plan.items`` files are to be loaded."""
        self.total += len(plan.items)
        self.started = self.last_plain = time.monotonic()
        if self.mode == "tty" and plan.items and self._bar is None:
            self._bar = click.progressbar(
                length=self.total,
                label="loading",
                file=self.stream,
                show_pos=True,
                show_eta=True,
                item_show_func=lambda _: self._detail(),
            )
            self._bar.__enter__()

    def start(self, item: WorkItem) -> None:
        """A file was claimed and is being loaded."""
        self.current = os.path.basename(item.path)
        if self._bar is not None:
            self._bar.render_progress()

    def progress(self, file_hash: str, records: int) -> None:
        """``records`` of the file being loaded have been read so far."""
        self.reading[file_hash] = records
        now = time.monotonic()
        if self._bar is not None and now - self.last_drawn >= TTY_EVERY_S:
            self.last_drawn = now
            self._bar.render_progress()
        self._plain_line(now)

    def result(self, result: FileResult) -> None:
        """A file is done (whatever its outcome)."""
        self.done += 1
        self.rows += result.rows_written
        self.reading.pop(result.file_hash, None)
        if self._bar is not None:
            self._bar.update(1)
        self._plain_line(time.monotonic())

    def _plain_line(self, now: float) -> None:
        if self.mode == "plain" and now - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = now
            click.echo(f"filedge: progress: {self.done}/{self.total} files, {self._detail()}", file=self.stream)

    def _detail(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rows = self.rows + sum(self.reading.values())
        current = f", loading {self.current}" if self.current and self.done < self.total else ""
        return f"{rows:,} rows, {rows / elapsed:,.0f} rows/s{current}"

    def close(self) -> None:
        """Take the live line down before the summary is printed."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
