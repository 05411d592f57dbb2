"""Test hooks at the runner's step boundaries, driven by environment variables.

``FILEDGE_TEST_CRASH_AT=<step>`` makes the process ``os._exit(CRASH_EXIT_CODE)`` at that step;
``FILEDGE_TEST_PAUSE_AT=<step>:<seconds>`` makes it sleep there. Steps: ``after_claim``,
``mid_insert``, ``after_dest_commit``, ``after_audit_commit``. Unset, they cost one dict lookup.

``FILEDGE_TEST_CRASH_ONCE=<marker file>`` together with ``FILEDGE_TEST_CRASH_AT`` crashes only
while the marker file does not exist, creating it just before exiting: the first process to reach
the step dies, every later one (a retry) goes through. Delete the marker to arm it again."""

from __future__ import annotations

import os
import time

CRASH_EXIT_CODE = 86
STEPS = ("after_claim", "mid_insert", "after_dest_commit", "after_audit_commit")


def _crash_armed() -> bool:
    """False when a crash-once marker is set and already exists; else claim it and say True."""
    marker = os.environ.get("FILEDGE_TEST_CRASH_ONCE")
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def checkpoint(step: str) -> None:
    """Crash or pause here if a test asked for it."""
    if os.environ.get("FILEDGE_TEST_CRASH_AT") == step and _crash_armed():
        os._exit(CRASH_EXIT_CODE)
    pause = os.environ.get("FILEDGE_TEST_PAUSE_AT")
    if pause:
        name, _, seconds = pause.partition(":")
        if name == step:
            time.sleep(float(seconds or 1))
