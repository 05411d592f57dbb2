"""Stopping a run on SIGTERM or SIGINT without losing or charging anything.

The first signal asks the run to stop: no new file is claimed, and the file being loaded may
finish for ``grace`` seconds. Then (or at a second signal) ``Interrupted`` is raised in the main
thread; the file's transaction rolls back and its lease is given back without charging an
attempt (``runner.process_claim``). The command prints its summary and exits 143 or 130
(``filedge run --watch``, a service whose normal end is a signal, exits 0)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

DEFAULT_GRACE_SECONDS = 30.0
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Interrupted(BaseException):
    """The grace period is over (or a second signal came): stop the current file now.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""


class Shutdown:
    """Whether a stop was asked for, and by which signal."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking as soon as a stop is asked for; whether one was."""
        return self._event.wait(seconds)

    @property
    def exit_code(self) -> int | None:
        """143 after SIGTERM, 130 after SIGINT, None when no stop was asked for."""
        return None if self.signal is None else EXIT_CODES.get(signal.Signals(self.signal), 128 + self.signal)


SHUTDOWN = Shutdown()
_installed = False


def install(grace: float = DEFAULT_GRACE_SECONDS) -> None:
    """Handle SIGTERM and SIGINT as described above (main thread only)."""
    global _installed

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"the grace period of {grace:g} s is over")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if SHUTDOWN.requested:
            raise Interrupted(f"{signal.Signals(signum).name} again")
        SHUTDOWN.request(signum)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _installed = True


def reclaim_sigint() -> None:
    """Put the SIGINT handler of ``install`` back in front of polars' (call once polars is
    loaded, before any file is claimed).

    polars registers a SIGINT hook of its own when it is first imported: a SIGINT that lands
    while any thread is inside polars makes that call raise KeyboardInterrupt, which would cut
    the file being loaded short instead of letting it finish within the grace period.
    ``signal.signal`` installs a new sigaction, which replaces the hook. polars is imported only
    when there is work (a scan of committed files does without its 0.2 s import)."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.getsignal(signal.SIGINT))


def disarm() -> None:
    """Cancel a pending grace-period alarm (the work it bounded is over): the process must not
    be interrupted, or killed by SIGALRM, while it reports and exits."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)

