"""Dagster front door against the command line, measured in the same run.

    .venv/bin/python bench/bench_dagster.py [--files 1000] [--committed 10000] [--rounds 3]

1. ``--files`` small CSV files (SQLite audit and destination): ingested (a) by ``filedge run``
   (the command, timed from outside) and (b) through Dagster — one sensor tick, its partitions
   added, and each requested run executed in-process with the implicit asset job on a temporary
   instance (what the daemon does, without its polling intervals). Printed: files/s of each and
   the ratio (goal >= 0.3).
2. The sensor's tick time with ``--committed`` already-committed files in the directory (median of
   ``--rounds`` ticks after a first tick). Goal: under 2 s.

Rounds alternate the two ways on fresh copies of the data; medians are compared."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILEDGE = str(Path(sys.executable).with_name("filedge"))


def make_workspace(root: Path, files: int, settled: bool = True) -> Path:
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    old = time.time() - 60
    for i in range(files):
        path = incoming / f"f{i:05d}.csv"
        path.write_text("order_id,amount\n" + "".join(f"{i}-{j},{j}.5\n" for j in range(5)))
        if settled:
            os.utime(path, (old, old))
    (root / "pipeline.yaml").write_text(yaml.safe_dump({
        "format": "csv", "dest_table": "orders",
        "connector": {"type": "sqlite", "url": "sqlite:///orders.db"},
        "columns": [{"source": "order_id", "required": True}, {"source": "amount", "type": "float"}],
    }))
    (root / "pipelines.yaml").write_text(yaml.safe_dump({"pipelines": [{
        "dir": "incoming", "config": "pipeline.yaml", "audit_db_url": "sqlite:///filedge.db", "run_batch_size": 500,
    }]}))
    return root


def time_cli(root: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([FILEDGE, "run", "--dir", "incoming", "--config", "pipeline.yaml",
                             "--audit-db-url", "sqlite:///filedge.db"], cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return elapsed


class Location:
    def __init__(self, root: Path, instance: dg.DagsterInstance) -> None:
        from filedge_dagster.definitions import build_definitions

        self.instance = instance
        self.defs = build_definitions(str(root / "pipelines.yaml"))
        self.sensor = self.defs.resolve_sensor_def("filedge_orders_sensor")
        self.job = self.defs.resolve_implicit_global_asset_job_def()

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, definitions=self.defs, resources=self.defs.resources)
        result = self.sensor(context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    def ingest(self) -> int:
        result = self.tick()
        for request in result.run_requests or []:
            run = self.job.execute_in_process(instance=self.instance, tags=request.tags,
                                              asset_selection=request.asset_selection, raise_on_error=True)
            assert run.success
        return len(result.run_requests or [])


def time_dagster(root: Path) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        started = time.perf_counter()
        runs = Location(root, instance).ingest()
        return time.perf_counter() - started, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--committed", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.INFO)  # Dagster logs every materialization event to the console

    cli_s, dagster_s, runs = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            cli_s.append(time_cli(make_workspace(Path(tmp) / f"cli{r}", args.files)))
            elapsed, runs = time_dagster(make_workspace(Path(tmp) / f"dg{r}", args.files))
            dagster_s.append(elapsed)
        c, d = statistics.median(cli_s), statistics.median(dagster_s)
        print(f"{args.files} small files -> SQLite, median of {args.rounds}:")
        print(f"  filedge run       {c:7.2f} s  {args.files / c:8.1f} files/s")
        print(f"  sensor + {runs} run(s) {d:7.2f} s  {args.files / d:8.1f} files/s")
        print(f"  ratio             {c / d:7.2f}x the command line (goal >= 0.3)")

        root = make_workspace(Path(tmp) / "committed", args.committed)
        time_cli(root)  # commit everything (and fill the stat cache)
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            location = Location(root, instance)
            location.tick()  # adds the partitions
            ticks = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                result = location.tick()
                ticks.append(time.perf_counter() - started)
                assert not result.run_requests
        t = statistics.median(ticks)
        print(f"sensor tick with {args.committed:,} committed files: {t:.2f} s (median of {args.rounds}; goal < 2 s)")


if __name__ == "__main__":
    main()
