"""The fault harness: worker processes loading generated files while a seeded nemesis kills and
stops them; then a clean run, and a checker that counts.

    .venv/bin/python -m tests.faults.harness --seed 7 --seconds 60 [--postgres URL]

CI runs a short fixed-seed version (tests/faults/test_faults.py). Any failure replays with its
seed: the nemesis' choices come from ``random.Random(seed)`` alone."""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filedge_core.audit import Attempt, AuditRow
from filedge_core.scan import hash_file
from tests.support import Workspace, age_leases

WORKERS = 3
RETRY_CAP = 50  # the nemesis kills often: files must not run out of attempts
STALE_MINUTES = 0.03  # 1.8 s leases, renewed every 0.45 s


@dataclass
class Report:
    """What the nemesis did and what the checker found."""

    seed: int
    files: int = 0
    rows: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"seed {self.seed}: {self.files} files, {self.rows} rows"]
        lines += [f"  {kind:<10} {count}" for kind, count in sorted(self.faults.items())]
        lines.append(f"  violations {len(self.violations)}")
        lines += [f"    {v}" for v in self.violations]
        return "\n".join(lines)


def make_files(ws: Workspace, rng: random.Random, count: int) -> dict[str, int]:
    """``count`` CSV files of 1-400 rows, each unique; expected rows per content hash."""
    expected = {}
    for n in range(count):
        rows = rng.randint(1, 400)
        text = "order_id,amount\n" + "".join(f"{n}-{i},{i}.25\n" for i in range(rows))
        path = ws.add(f"f{n:04d}.csv", text)
        expected[hash_file(path)] = rows
    return expected


def _resume(proc: subprocess.Popen[str]) -> None:
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def nemesis(ws: Workspace, rng: random.Random, seconds: float, report: Report) -> None:
    """Keep WORKERS `filedge run` processes going and hurt them, for ``seconds``."""
    env = {"FILEDGE_TEST_PAUSE_AT": "mid_insert:0.05"}  # widen the window inside transactions
    procs: list[subprocess.Popen[str]] = []
    stopped: list[tuple[subprocess.Popen[str], float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        procs = [p for p in procs if p.poll() is None]
        while len(procs) < WORKERS:
            procs.append(ws.popen_run(env=env))
            report.faults["started"] += 1
        for proc, until in list(stopped):
            if time.monotonic() >= until:
                _resume(proc)
                stopped.remove((proc, until))
        time.sleep(rng.uniform(0.05, 0.4))
        victim = rng.choice(procs)
        action = rng.random()
        if victim.poll() is not None or any(victim is p for p, _ in stopped):
            continue
        if action < 0.35:
            victim.send_signal(signal.SIGKILL)
            report.faults["sigkill"] += 1
        elif action < 0.5:
            # Stopped longer than its lease: reclaimed meanwhile, fenced when it resumes.
            victim.send_signal(signal.SIGSTOP)
            stopped.append((victim, time.monotonic() + rng.uniform(2.0, 3.0)))
            report.faults["sigstop"] += 1
        elif action < 0.6:
            victim.send_signal(signal.SIGTERM)
            report.faults["sigterm"] += 1
    for proc, _ in stopped:
        _resume(proc)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            report.faults["stuck"] += 1


def check(ws: Workspace, expected: dict[str, int], report: Report) -> None:
    """Exactly once, every row accounted for, tokens consistent, status agreeing."""
    def violation(text: str) -> None:
        report.violations.append(text)

    got = ws.rows_per_hash()
    for file_hash, rows in expected.items():
        if got.get(file_hash, 0) != rows:
            violation(f"{file_hash[:12]}: {got.get(file_hash, 0)} rows in the table, expected {rows}")
    for file_hash in set(got) - set(expected):
        violation(f"{file_hash[:12]}: rows of a file that was never there")
    duplicates = ws.query("SELECT order_id, count(*) FROM orders GROUP BY order_id HAVING count(*) > 1")
    if duplicates:
        violation(f"{len(duplicates)} order ids loaded twice, e.g. {duplicates[0]}")
    audit = ws.audit()
    try:
        rows = {row.file_hash: row for row in audit.rows()}
        counts = audit.counts()
        history = {file_hash: audit.attempts("orders", file_hash) for file_hash in rows}
    finally:
        audit.dispose()
    ledger = dict(ws.query("SELECT file_hash, claim_token FROM _filedge_loads"))
    for file_hash in expected:
        row = rows.get(file_hash)
        if row is None:
            violation(f"{file_hash[:12]}: no audit row")
            continue
        if row.state != "COMMITTED" and not (row.state == "FAILED" and row.last_error):
            violation(f"{file_hash[:12]}: left {row.state}")
        if row.attempts > RETRY_CAP:
            violation(f"{file_hash[:12]}: {row.attempts} attempts, above retry_cap {RETRY_CAP}")
        if row.state == "COMMITTED" and row.rows_written != expected[file_hash]:
            violation(f"{file_hash[:12]}: audit says {row.rows_written} rows, expected {expected[file_hash]}")
        if file_hash in ledger and ledger[file_hash] > row.claim_token:
            violation(f"{file_hash[:12]}: ledger token {ledger[file_hash]} ahead of the audit's {row.claim_token}")
        check_history(file_hash, row, history[file_hash], violation)
    status = subprocess.run(
        [sys.executable, "-m", "filedge_core.cli", "status", "--json", "--audit-db-url", ws.audit_url],
        capture_output=True, text=True,
    )
    import json

    if status.returncode != 0 or json.loads(status.stdout) != counts:
        violation(f"filedge status disagrees with the table: {status.stdout.strip()} vs {counts}")


def check_history(file_hash: str, row: AuditRow, attempts: list[Attempt], violation: Callable[[str], None]) -> None:
    """The attempt history agrees with the audit row: one attempt per claim token, every one
    closed (nothing is PROCESSING any more), the last one the row's outcome."""
    tokens = [a.claim_token for a in attempts]
    if tokens != list(range(1, row.claim_token + 1)):
        violation(f"{file_hash[:12]}: attempts with tokens {tokens}, the audit's token is {row.claim_token}")
        return
    still_open = [a.claim_token for a in attempts if a.outcome is None or a.ended_at is None]
    if still_open:
        violation(f"{file_hash[:12]}: attempts {still_open} never closed")
    last = attempts[-1]
    if row.state == "COMMITTED" and (last.outcome, last.rows_written) != ("committed", row.rows_written):
        violation(f"{file_hash[:12]}: COMMITTED with {row.rows_written} rows, last attempt {last.outcome} {last.rows_written}")
    if [a for a in attempts[:-1] if a.outcome == "committed"]:
        violation(f"{file_hash[:12]}: an attempt before the last one committed")
    charged = sum(1 for a in attempts if a.outcome != "given_back")
    if charged != row.attempts:
        violation(f"{file_hash[:12]}: {charged} charged attempts in the history, {row.attempts} in the audit")


def run(seed: int, seconds: float, files: int, root: Path, postgres: str | None = None) -> Report:
    """One campaign; the report lists any violation."""
    rng = random.Random(seed)
    ws = Workspace(root, audit_url=postgres, dest_url=postgres)
    ws.configure(retry_cap=RETRY_CAP, stale_timeout_minutes=STALE_MINUTES)
    expected = make_files(ws, rng, files)
    report = Report(seed, len(expected), sum(expected.values()))
    nemesis(ws, rng, seconds, report)
    time.sleep(STALE_MINUTES * 60 + 0.5)  # every lease left by a victim is stale now
    audit = ws.audit()
    try:
        age_leases(audit)
    finally:
        audit.dispose()
    final = ws.run(timeout=300)
    if final.returncode != 0:
        report.violations.append(f"the clean run failed ({final.returncode}): {final.stderr.strip()[-500:]}")
    check(ws, expected, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--postgres", metavar="URL", help="audit and destination on this database (else SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="filedge-faults-") as tmp:
        report = run(args.seed, args.seconds, args.files, Path(tmp), args.postgres)
    print(report.table())
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
