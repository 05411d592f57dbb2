"""A private virtual environment with dlt 1.31 for the peer benchmark.

dlt is not a dependency of filedge: it lives in its own environment (its dependencies must not
shape filedge's), created on first use with pip from the package index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DLT_REQUIREMENT = "dlt[sqlalchemy,postgres,parquet]==1.31.0"
CACHE = Path(os.environ.get("FILEDGE_BENCH_CACHE", Path.home() / ".cache" / "filedge-bench"))
ENV_DIR = CACHE / "dlt-1.31.0"


def dlt_python() -> str:
    """The environment's Python, creating the environment if missing."""
    python = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / ".installed"
    if not marker.exists():
        print(f"bench: installing {DLT_REQUIREMENT} into {ENV_DIR} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", DLT_REQUIREMENT],
            check=True,
        )
        marker.write_text(DLT_REQUIREMENT + "\n")
    return str(python)
