"""``python -m bench``: every performance goal of filedge, each against its reference measured
in the same run, rounds alternating, medians compared.

    .venv/bin/python -m bench                       # everything (about 12 minutes)
    .venv/bin/python -m bench --only sqlite,hash    # some workloads
    .venv/bin/python -m bench --rounds 5

PostgreSQL workloads use ``$FILEDGE_TEST_POSTGRES_URL`` or start a throw-away server with
scripts/pg-server. The dlt peer runs in its own virtual environment (bench/dlt_env.py),
installed on first use. Everything else is generated into a temporary directory."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import data

ROOT = Path(__file__).resolve().parents[1]
FILEDGE = str(Path(sys.executable).with_name("filedge"))
REFS = Path(__file__).resolve().parent / "refs"
MB = 1e6


@dataclass
class Result:
    """One line of the table."""

    workload: str
    filedge: str
    reference: str
    ratio: str
    goal: str
    met: bool | None


class Context:
    """What the workloads share: options, the temp directory, the big CSV, PostgreSQL."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.rounds = args.rounds
        self.rows = args.rows
        self.workdir = workdir
        self.args = args
        self._csv: Path | None = None
        self._pg: str | None = os.environ.get("FILEDGE_TEST_POSTGRES_URL")
        self._pg_dir: Path | None = None
        self.filedge_seconds: dict[str, float] = {}  # workload -> filedge median, for the peer

    @property
    def csv(self) -> Path:
        """The 8-column CSV of ``--rows`` rows, generated once."""
        if self._csv is None:
            directory = self.workdir / "big"
            directory.mkdir()
            self._csv = data.write_csv(directory / "data.csv", self.rows)
        return self._csv

    @property
    def postgres(self) -> str:
        if self._pg is None:
            self._pg_dir = self.workdir / "pg"
            out = subprocess.run(
                ["bash", str(ROOT / "scripts" / "pg-server"), "start", str(self._pg_dir)],
                capture_output=True, text=True, check=True,
            )
            self._pg = out.stdout.strip()
        return self._pg.replace("postgresql+psycopg://", "postgresql://")

    def scratch_database(self) -> "Scratch":
        return Scratch(self.postgres)

    def close(self) -> None:
        if self._pg_dir is not None:
            subprocess.run(["bash", str(ROOT / "scripts" / "pg-server"), "stop", str(self._pg_dir)], capture_output=True)


class Scratch:
    """A database created for one measurement and dropped after it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.name = f"bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.base.rsplit("/", 1)[0] + "/" + self.name

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def timed(args: list[str], **kwargs: object) -> float:
    """Wall seconds of a command, which must succeed."""
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:3]))} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def pipeline_file(directory: Path, connector: dict[str, str], **extra: object) -> Path:
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(
        {"name": "bench", "dest_table": "bench", "connector": connector, "columns": data.COLUMNS, **extra}
    ))
    return path


def filedge_run(incoming: Path, config: Path, audit_url: str) -> list[str]:
    return [FILEDGE, "run", "--dir", str(incoming), "--config", str(config), "--audit-db-url", audit_url]


def fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove_database(path: Path) -> Path:
    """``path`` with its SQLite database (and WAL files) gone."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def fresh_sqlite_run(base: Path, incoming: Path, **extra: object) -> list[str]:
    """The `filedge run` command for ``incoming`` into new SQLite databases in ``base``."""
    remove_database(base / "dest.db")
    remove_database(base / "audit.db")
    config = pipeline_file(base, {"type": "sqlite", "url": f"sqlite:///{base / 'dest.db'}"}, **extra)
    return filedge_run(incoming, config, f"sqlite:///{base / 'audit.db'}")


_PEAK_RSS = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, p.returncode, p.stderr]))\n"
)


def peak_rss(args: list[str]) -> tuple[int, float]:
    """Peak RSS (bytes, as the kernel counts it) and seconds of a command, run by a helper
    process of its own (RUSAGE_CHILDREN keeps the largest child ever waited for)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    peak, code, stderr = json.loads(out.stdout)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({code}): {stderr[-2000:]}")
    return peak, seconds


def alternate(rounds: int, *measures: Callable[[], float]) -> list[float]:
    """Run the measures in turn, ``rounds`` times; the median of each."""
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            samples[i].append(measure())
    return [statistics.median(s) for s in samples]


def ratio_result(name: str, ours: float, ref: float, ref_name: str, units: float, unit: str, goal: float) -> Result:
    """A throughput comparison: ratio = our rate / the reference's rate."""
    ratio = ref / ours
    return Result(
        name,
        f"{ours:.2f} s ({units / ours:,.0f} {unit}/s)",
        f"{ref_name}: {ref:.2f} s ({units / ref:,.0f} {unit}/s)",
        f"{ratio:.2f}×",
        f"≥ {goal:g}×",
        ratio >= goal,
    )


# -- workloads ------------------------------------------------------------------------------------


def sqlite_load(ctx: Context) -> list[Result]:
    """The big CSV into SQLite: `filedge run` against polars + executemany in one transaction."""
    base = ctx.workdir / "sqlite"
    incoming = fresh_dir(base, "incoming")
    os.link(ctx.csv, incoming / "data.csv")

    def ours() -> float:
        return timed(fresh_sqlite_run(base, incoming))

    def reference() -> float:
        target = remove_database(base / "ref.db")
        return timed([sys.executable, str(REFS / "sqlite_load.py"), str(ctx.csv), str(target)])

    ref, mine = alternate(ctx.rounds, reference, ours)
    ctx.filedge_seconds["sqlite"] = mine
    return [ratio_result(f"{ctx.rows:,}-row CSV → SQLite", mine, ref, "polars + executemany", ctx.rows, "rows", 0.8)]


def postgres_load(ctx: Context) -> list[Result]:
    """The big CSV into PostgreSQL: `filedge run` against polars + binary COPY."""
    base = ctx.workdir / "postgres"
    incoming = fresh_dir(base, "incoming")
    os.link(ctx.csv, incoming / "data.csv")

    def ours() -> float:
        with ctx.scratch_database() as url:
            config = pipeline_file(base, {"type": "postgresql", "url": url})
            return timed(filedge_run(incoming, config, url))

    def reference() -> float:
        with ctx.scratch_database() as url:
            return timed([sys.executable, str(REFS / "pg_load.py"), str(ctx.csv), url])

    ref, mine = alternate(ctx.rounds, reference, ours)
    ctx.filedge_seconds["postgres"] = mine
    return [ratio_result(f"{ctx.rows:,}-row CSV → PostgreSQL", mine, ref, "polars + binary COPY", ctx.rows, "rows", 0.7)]


def dlt_peer(ctx: Context) -> list[Result]:
    """dlt loading the same file into the same databases; compared with filedge's medians."""
    from .dlt_env import dlt_python

    try:
        python = dlt_python()
    except subprocess.CalledProcessError as exc:
        return [Result("dlt peer", "-", f"dlt could not be installed: {exc}", "-", "≥ 2×", None)]
    results = []
    for target in ("sqlite", "postgres"):
        if target not in ctx.filedge_seconds:
            (sqlite_load if target == "sqlite" else postgres_load)(ctx)
        base = fresh_dir(ctx.workdir, f"dlt-{target}")

        def once() -> float:
            work = fresh_dir(base, "work")
            if target == "sqlite":
                return timed([python, str(REFS / "dlt_load.py"), str(ctx.csv), "sqlite", str(work / "dest.db"), str(work)])
            with ctx.scratch_database() as url:
                return timed([python, str(REFS / "dlt_load.py"), str(ctx.csv), "postgres", url, str(work)])

        (peer,) = alternate(ctx.rounds, once)
        mine = ctx.filedge_seconds[target]
        name = "SQLite" if target == "sqlite" else "PostgreSQL"
        results.append(ratio_result(f"same CSV → {name}, against dlt 1.31", mine, peer, "dlt", ctx.rows, "rows", 2.0))
    return results


def hashing(ctx: Context) -> list[Result]:
    """SHA-256 of the big CSV: filedge's two hashing paths against `openssl dgst -sha256`."""
    path = ctx.csv
    size = path.stat().st_size
    script = (
        "import sys, time\n"
        "from filedge_core.scan import hash_file\n"
        "from filedge_core.source import open_snapshot, plain_stream\n"
        "t = time.perf_counter(); hash_file(sys.argv[1]); scan = time.perf_counter() - t\n"
        "t = time.perf_counter()\n"
        "with open_snapshot(sys.argv[1], None) as s:\n"
        "    stream = plain_stream(s)\n"
        "    while stream.read(8 << 20): pass\n"  # what a load reads, batch by batch
        "print(scan, time.perf_counter() - t)\n"
    )
    scans, loads = [], []

    def ours() -> float:
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
        scan, load = map(float, out.stdout.split())
        scans.append(scan)
        loads.append(load)
        return scan

    def reference() -> float:
        return timed(["openssl", "dgst", "-sha256", str(path)])

    ref, _ = alternate(max(ctx.rounds, 5), reference, ours)
    results = []
    for label, samples in (("scan (hashlib.file_digest)", scans), ("load (hash while reading)", loads)):
        mine = statistics.median(samples)
        ratio = ref / mine
        results.append(Result(
            f"SHA-256 of the {size / MB:.0f} MB CSV: {label}",
            f"{mine:.3f} s ({size / mine / MB:,.0f} MB/s)",
            f"openssl dgst -sha256: {ref:.3f} s ({size / ref / MB:,.0f} MB/s)",
            f"{ratio:.2f}×", "≥ 0.7×", ratio >= 0.7,
        ))
    return results


def small_files(ctx: Context) -> list[Result]:
    """Many small files into SQLite: per-file fixed costs."""
    files, rows = ctx.args.small_files, 100
    base = ctx.workdir / "small"
    incoming = base / "incoming"
    data.write_small_files(incoming, files, rows)

    def ours() -> float:
        return timed(fresh_sqlite_run(base, incoming))

    def reference() -> float:
        target = remove_database(base / "ref.db")
        out = subprocess.run(
            [sys.executable, str(REFS / "small_files_load.py"), str(incoming), str(target)],
            capture_output=True, text=True, check=True,
        )
        return float(out.stdout.strip())

    ref, mine = alternate(ctx.rounds, reference, ours)
    return [ratio_result(
        f"{files:,} files × {rows} rows → SQLite", mine, ref, "one transaction per pre-parsed file", files, "files", 0.4
    )]


def committed_scan(ctx: Context) -> list[Result]:
    """`filedge run` over files that are all committed already, against a bare scandir + stat."""
    files = ctx.args.committed_files
    base = fresh_dir(ctx.workdir, "committed")
    incoming = base / "incoming"
    audit_url = f"sqlite:///{base / 'audit.db'}"
    config = pipeline_file(base, {"type": "sqlite", "url": f"sqlite:///{base / 'dest.db'}"})
    setup = (
        "import sys\n"
        "from bench.setup_committed import make\n"
        "make(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))\n"
    )
    subprocess.run([sys.executable, "-c", setup, str(incoming), str(config), audit_url, str(files)],
                   cwd=ROOT, check=True)
    bare = "import os, sys\nfor e in os.scandir(sys.argv[1]): e.stat(follow_symlinks=False)\n"

    def ours() -> float:
        started = time.perf_counter()
        out = subprocess.run(filedge_run(incoming, config, audit_url), capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - started
        if not out.stdout.startswith(f"Committed: 0 Failed: 0 Skipped: {files} "):
            raise RuntimeError(f"unexpected summary: {out.stdout}")
        return elapsed

    def reference() -> float:
        return timed([sys.executable, "-c", bare, str(incoming)])

    ref, mine = alternate(ctx.rounds, reference, ours)
    times = mine / ref
    return [Result(
        f"`filedge run` over {files:,} committed files",
        f"{mine:.2f} s", f"python: os.scandir + stat: {ref:.2f} s", f"{times:.1f}× its time", "≤ 3×", times <= 3,
    )]


def memory(ctx: Context) -> list[Result]:
    """Peak RSS of `filedge run` on a 1 GB CSV into SQLite, and of a one-row file."""
    goal = 400 * 1000 * 1000
    base = ctx.workdir / "memory"
    large, small = fresh_dir(base, "large"), fresh_dir(base, "small")
    rows = data.write_csv_of_size(large / "big.csv", int(ctx.args.gigabytes * 1e9))
    data.write_csv(small / "one.csv", 1)
    size = (large / "big.csv").stat().st_size
    fixed = statistics.median(peak_rss(fresh_sqlite_run(base, small))[0] for _ in range(ctx.rounds))
    runs = [peak_rss(fresh_sqlite_run(base, large)) for _ in range(ctx.rounds)]
    peak = statistics.median(p for p, _ in runs)
    seconds = statistics.median(s for _, s in runs)
    return [Result(
        f"a {size / 1e9:.2f} GB CSV ({rows:,} rows) → SQLite: peak RSS",
        f"{peak / MB:.0f} MB ({seconds:.0f} s)", f"a one-row file: {fixed / MB:.0f} MB",
        f"{peak / goal:.2f}× the goal", "< 400 MB", peak < goal,
    )]


def status_startup(ctx: Context) -> list[Result]:
    """`filedge status` on a large audit table against `python -c pass`."""
    rows = ctx.args.audit_rows
    base = fresh_dir(ctx.workdir, "status")
    audit_url = f"sqlite:///{base / 'audit.db'}"
    setup = "import sys\nfrom bench.setup_committed import fill_audit\nfill_audit(sys.argv[1], int(sys.argv[2]))\n"
    subprocess.run([sys.executable, "-c", setup, audit_url, str(rows)], cwd=ROOT, check=True)

    def ours() -> float:
        return timed([FILEDGE, "status", "--audit-db-url", audit_url])

    def reference() -> float:
        return timed([sys.executable, "-c", "pass"])

    ref, mine = alternate(max(ctx.rounds, 5), reference, ours)
    above = mine - ref
    return [Result(
        f"`filedge status` on a {rows:,}-row audit table", f"{mine:.3f} s", f"python -c pass: {ref:.3f} s",
        f"+{above:.3f} s", "< +0.5 s", above < 0.5,
    )]


WORKLOADS: dict[str, Callable[[Context], list[Result]]] = {
    "sqlite": sqlite_load,
    "postgres": postgres_load,
    "dlt": dlt_peer,
    "hash": hashing,
    "small": small_files,
    "scan": committed_scan,
    "memory": memory,
    "status": status_startup,
}


def print_table(results: list[Result]) -> None:
    print()
    print("| workload | filedge | reference | ratio | goal | met |")
    print("|---|---|---|---|---|---|")
    for r in results:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        print(f"| {r.workload} | {r.filedge} | {r.reference} | {r.ratio} | {r.goal} | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big CSV")
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--committed-files", type=int, default=100_000)
    parser.add_argument("--audit-rows", type=int, default=100_000)
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the memory workload's CSV")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="filedge-bench-") as tmp:
        ctx = Context(args, Path(tmp))
        try:
            for name in chosen:
                begun = time.perf_counter()
                print(f"bench: {name} ...", file=sys.stderr, flush=True)
                found = WORKLOADS[name](ctx)
                for result in found:
                    print(f"  {result.workload}: {result.filedge} vs {result.reference} -> {result.ratio}",
                          file=sys.stderr, flush=True)
                print(f"  ({time.perf_counter() - begun:.0f} s)", file=sys.stderr, flush=True)
                results.extend(found)
        finally:
            ctx.close()
    print_table(results)
    print(f"\n{len(results)} results in {(time.perf_counter() - started) / 60:.1f} min, "
          f"median of {args.rounds} rounds each; {sum(1 for r in results if r.met is False)} goal(s) not met")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2))
