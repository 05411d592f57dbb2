"""Files larger than memory: ``filedge run`` reads in batches, so its peak RSS grows with
``batch_bytes``, not with the file. Measured on the real command, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import Workspace

MiB = 1 << 20
COLUMNS = [
    {"source": "id", "type": "int", "required": True},
    {"source": "name"},
    {"source": "amount", "type": "float"},
    {"source": "flag", "type": "bool"},
    {"source": "day", "type": "date"},
    {"source": "at", "type": "datetime"},
]


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("id,name,amount,flag,day,at\n")
        for start in range(0, rows, 100_000):
            out.write("".join(
                f"{i},name-{i % 997},{i * 0.25:.2f},{'true' if i % 2 else 'false'},"
                f"2024-01-{1 + i % 28:02d},2024-01-02T03:04:{i % 60:02d}Z\n"
                for i in range(start, min(rows, start + 100_000))
            ))


def peak_rss_of_run(ws: Workspace) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Peak RSS (bytes) of one ``filedge run`` child process, measured by the kernel."""
    # RUSAGE_CHILDREN reports the largest child waited for so far, so each measurement runs in
    # a fresh helper process of its own.
    script = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, p.stdout, p.stderr]))\n"
    )
    helper = subprocess.run(
        [sys.executable, "-c", script, *ws.run_args()], cwd=ws.root, capture_output=True, text=True, timeout=600
    )
    maxrss_kib, code, stdout, stderr = json.loads(helper.stdout)
    return maxrss_kib * 1024, subprocess.CompletedProcess(ws.run_args(), code, stdout, stderr)


def test_peak_memory_follows_the_batch_size_not_the_file_size(tmp_path: Path) -> None:
    batch = MiB
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    baseline_ws = Workspace(tmp_path / "small")
    baseline_ws.configure(columns=COLUMNS, dest_table="big", batch_bytes=batch)
    write_csv(baseline_ws.incoming / "small.csv", 10)
    baseline, result = peak_rss_of_run(baseline_ws)
    assert result.returncode == 0, result.stderr

    ws = Workspace(tmp_path / "large")
    ws.configure(columns=COLUMNS, dest_table="big", batch_bytes=batch)
    big = ws.incoming / "big.csv"
    rows = 1_700_000
    write_csv(big, rows)
    size = big.stat().st_size
    assert size > 100 * MiB
    peak, result = peak_rss_of_run(ws)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("Committed: 1 ")
    assert ws.query("SELECT count(*) FROM big") == [(rows,)]
    growth = peak - baseline
    print(f"file {size / MiB:.0f} MiB, batch {batch / MiB:.0f} MiB: peak RSS {peak / MiB:.0f} MiB, "
          f"{growth / MiB:.0f} MiB above a one-row file's")
    # About 17 bytes of RSS per byte of batch (docs/decisions.md); a whole-file read would
    # need several times the file's size.
    assert growth < 48 * batch, f"peak RSS grew {growth / MiB:.0f} MiB over the baseline"
