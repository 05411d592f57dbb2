"""The user's crash-retry walkthrough (docs/crash-retry-demo.md), run verbatim in a temp dir.

Every ```bash block of the page runs in order with the installed ``filedge``; its stdout must be
exactly the ``# `` lines written under its commands. Only ``/tmp/crash-demo`` is replaced."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

DOC = ROOT / "docs" / "crash-retry-demo.md"


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """(script, expected stdout lines) for each bash block; heredoc bodies are not expectations."""
    out = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        expected, heredoc_end = [], None
        for line in body.splitlines():
            if heredoc_end is not None:
                if line == heredoc_end:
                    heredoc_end = None
                continue
            match = re.search(r"<<'?(\w+)'?", line)
            if match:
                heredoc_end = match.group(1)
            elif line.startswith("# "):
                expected.append(line[2:])
        out.append((body, expected))
    return out


def test_walkthrough_verbatim(tmp_path: Path) -> None:
    demo = tmp_path / "crash-demo"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FILEDGE_AUDIT_DB_URL", None)
    steps = blocks(DOC.read_text())
    assert len(steps) == 8
    assert sum(len(expected) for _, expected in steps) == 13
    for script, expected in steps:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script.replace("/tmp/crash-demo", str(demo))],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"{script}\n--- stderr:\n{result.stderr}"
        assert result.stdout.splitlines() == expected, script
        assert "Traceback" not in result.stderr
