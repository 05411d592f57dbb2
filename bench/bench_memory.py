"""Peak memory of `filedge run` on a file larger than its batches: a 1 GB CSV into SQLite.

    .venv/bin/python bench/bench_memory.py [--gigabytes 1.0] [--rounds 3] [--batch 8MiB]

Generates the CSV once (deterministic; 8 columns: strings, ints, floats, bool, date,
datetime), then runs the real command ``--rounds`` times against a fresh SQLite database and
reads its peak RSS from the kernel (getrusage of the waited-for child). Prints the median
peak RSS against the 400 MB goal, the same for a one-row file (the fixed cost: interpreter,
imports), and the throughput."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FILEDGE = str(Path(sys.executable).with_name("filedge"))
GOAL_BYTES = 400 * 1000 * 1000
HEADER = "id,customer,region,qty,amount,paid,day,created_at\n"
COLUMNS = [
    {"source": "id", "type": "int", "required": True},
    {"source": "customer"},
    {"source": "region"},
    {"source": "qty", "type": "int"},
    {"source": "amount", "type": "float"},
    {"source": "paid", "type": "bool"},
    {"source": "day", "type": "date"},
    {"source": "created_at", "type": "datetime"},
]


def write_csv(path: Path, target_bytes: int) -> int:
    """About ``target_bytes`` of rows; returns the row count."""
    rows = 0
    with path.open("w") as out:
        out.write(HEADER)
        while out.tell() < target_bytes:
            out.write("".join(
                f"{i},customer-{i % 10007},region-{i % 13},{i % 100},{i * 0.25:.2f},"
                f"{'true' if i % 2 else 'false'},2024-{1 + i % 12:02d}-{1 + i % 28:02d},"
                f"2024-01-02T03:{i % 60:02d}:{(i * 7) % 60:02d}Z\n"
                for i in range(rows, rows + 100_000)
            ))
            rows += 100_000
    return rows


_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
    "time.perf_counter() - t, p.returncode, p.stdout, p.stderr]))\n"
)


def measure(workdir: Path, incoming: Path, batch: str) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of one `filedge run` on a fresh database."""
    for name in ("dest.db", "dest.db-wal", "dest.db-shm", "audit.db", "audit.db-wal", "audit.db-shm"):
        (workdir / name).unlink(missing_ok=True)
    config = workdir / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bench", "dest_table": "bench", "batch_bytes": batch,
        "connector": {"type": "sqlite", "url": "sqlite:///dest.db"}, "columns": COLUMNS,
    }))
    args = [FILEDGE, "run", "--config", str(config), "--dir", str(incoming),
            "--audit-db-url", f"sqlite:///{workdir / 'audit.db'}"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, check=True)
    peak, seconds, code, stdout, stderr = json.loads(out.stdout)
    if code != 0 or not stdout.startswith("Committed: 1 "):
        raise SystemExit(f"filedge run failed ({code}): {stdout} {stderr}")
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", default="8MiB", help="batch_bytes of the pipeline")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="filedge-bench-mem-"))
    try:
        small, large = workdir / "small", workdir / "large"
        small.mkdir()
        large.mkdir()
        (small / "one.csv").write_text(HEADER + "1,c,r,1,1.25,true,2024-01-01,2024-01-02T03:04:05Z\n")
        started = time.perf_counter()
        rows = write_csv(large / "big.csv", int(args.gigabytes * 1e9))
        size = (large / "big.csv").stat().st_size
        print(f"generated {size / 1e9:.2f} GB, {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        fixed = statistics.median(measure(workdir, small, args.batch)[0] for _ in range(args.rounds))
        runs = [measure(workdir, large, args.batch) for _ in range(args.rounds)]
        peak = statistics.median(p for p, _ in runs)
        seconds = statistics.median(s for _, s in runs)
        print(f"csv -> sqlite, {size / 1e9:.2f} GB, batch_bytes {args.batch}, median of {args.rounds}:")
        print(f"  peak RSS        {peak / 1e6:6.0f} MB   ({peak / GOAL_BYTES:.2f}x the 400 MB goal)")
        print(f"  one-row file    {fixed / 1e6:6.0f} MB   (interpreter and imports)")
        print(f"  time            {seconds:6.1f} s    {rows / seconds:,.0f} rows/s, {size / seconds / 1e6:.0f} MB/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
