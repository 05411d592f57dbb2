"""shutdown.install(): the first SIGINT only asks for a stop, even in the middle of polars work
(polars' own SIGINT hook, registered when it is imported, is replaced once a run begins work)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import ROOT

# A process that installs filedge's handlers as `filedge run` does, begins work as a run does
# (which loads polars: its hook is registered then), keeps polars busy (in the main thread and in
# a read-ahead-like thread, as the CSV reader does), signals itself mid-query and reports.
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    from filedge_core.shutdown import SHUTDOWN, install
    install(30)
    assert "polars" not in sys.modules
    from filedge_core.runner import RunSummary, work
    from tests.support import Workspace
    ws = Workspace(Path(sys.argv[1]))
    work(ws.config(), [], ws.audit(), RunSummary())
    import polars as pl

    frame = pl.DataFrame({"a": range(1_000_000)})

    def busy(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame.select((pl.col("a") * 3).sort(descending=True).sum())

    side = []
    def other():
        try:
            busy(1.5)
            side.append("finished")
        except BaseException as exc:
            side.append(type(exc).__name__)

    thread = threading.Thread(target=other)
    thread.start()
    threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        busy(1.5)
        main = "finished"
    except BaseException as exc:
        main = type(exc).__name__
    thread.join()
    print(main, side[0], SHUTDOWN.requested)
    """
)


def test_a_sigint_during_polars_work_asks_for_a_stop_without_interrupting_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["finished", "finished", "True"], done.stderr
