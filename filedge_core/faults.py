"""Test hooks at the runner's step boundaries, driven by environment variables.

``FILEDGE_TEST_CRASH_AT=<step>`` makes the process ``os._exit(CRASH_EXIT_CODE)`` at that step;
``FILEDGE_TEST_PAUSE_AT=<step>:<seconds>`` makes it sleep there. Steps: ``after_claim``,
``mid_insert``, ``after_dest_commit``, ``after_audit_commit``. Unset, they cost one dict lookup."""

from __future__ import annotations

import os
import time

CRASH_EXIT_CODE = 86
STEPS = ("after_claim", "mid_insert", "after_dest_commit", "after_audit_commit")


def checkpoint(step: str) -> None:
    """Crash or pause here if a test asked for it."""
    if os.environ.get("FILEDGE_TEST_CRASH_AT") == step:
        os._exit(CRASH_EXIT_CODE)
    pause = os.environ.get("FILEDGE_TEST_PAUSE_AT")
    if pause:
        name, _, seconds = pause.partition(":")
        if name == step:
            time.sleep(float(seconds or 1))
