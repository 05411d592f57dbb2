"""shutdown.install(): the first SIGINT only asks for a stop, even in the middle of polars work."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A process that installs filedge's handlers, keeps polars busy (in the main thread and in a
# read-ahead-like thread, as the CSV reader does), signals itself mid-query and reports.
PROGRAM = textwrap.dedent(
    """
    import os, signal, threading, time
    from filedge_core.shutdown import SHUTDOWN, install
    install(30)
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


def test_a_sigint_during_polars_work_asks_for_a_stop_without_interrupting_it() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["finished", "finished", "True"], done.stderr
