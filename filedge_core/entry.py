"""The ``filedge`` command's entry point. A Ctrl-C while the command is still importing its
modules (click, the CLI) ends it the way one during its work does: one line, exit code 130,
no traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Import the command line, then run it."""
    try:
        from .cli import main as command
    except KeyboardInterrupt:
        sys.stderr.write("filedge: error: interrupted\n")
        raise SystemExit(130) from None
    command()
