"""The fault harness: worker processes loading generated files while a seeded nemesis kills,
stops and signals them, changes the files under them and, on PostgreSQL, restarts the server and
makes the destination refuse connections; then a clean run, and a checker that counts.

    .venv/bin/python -m tests.faults.harness --seed 7 --minutes 5 [--postgres]

CI runs a short fixed-seed version on each database (tests/faults/test_faults.py). Any failure
replays with its seed: the nemesis' choices come from ``random.Random(seed)`` alone (which
process is alive when a signal is due still depends on timing)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
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
from tests.proxy import Proxy
from tests.support import ROOT, Workspace, age_leases

WORKERS = 3
RETRY_CAP = 50  # the nemesis hurts often: files must not run out of attempts
STALE_MINUTES = 0.03  # 1.8 s leases, renewed every 0.45 s
BATCH_BYTES = 1024  # files are read in several batches, so they can change between two of them
HEADER = "order_id,amount\n"
PROCESS_FAULTS = ("sigkill", "sigstop", "sigterm", "sigint")
FILE_FAULTS = ("append", "truncate", "rewrite", "rename", "delete", "create")
DATABASE_FAULTS = ("pg_restart", "dest_refused")

# A stop (one SIGTERM or SIGINT) must let the file being loaded finish: the grace period (30 s)
# outlasts every file here, so a file interrupted by a stop is a violation.
GRACE_CUT_SHORT = "a stop cut its file short"

# What a line on a worker's stderr shows, first match wins.
SIGNS = [
    ("changed while being read", "file changed mid-read: released"),
    ("disappeared before it was read", "file gone before read: released"),
    ("claim token", "zombie's write refused (fenced)"),
    ("lease lost", "lease lost"),
    ("interrupted (", GRACE_CUT_SHORT),
    ("given back", "lease given back uncharged"),
    ("FAILED", "file attempt failed"),
    ("error:", "run ended by an error"),
]

Rows = collections.Counter  # (order_id, amount) -> count: what one content must load as


@dataclass
class Report:
    """What the nemesis did and what the checker found."""

    seed: int
    database: str
    files: int = 0
    rows: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    outcome: collections.Counter[str] = field(default_factory=collections.Counter)
    seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def table(self) -> str:
        """The summary: faults injected by kind, files and rows, the end state, violations."""
        lines = [
            f"seed {self.seed} on {self.database}: {self.files} file contents ({self.rows} rows) "
            "existed at some point",
            "  faults injected:",
        ]
        lines += [f"    {kind:<13} {count}" for kind, count in sorted(self.faults.items())]
        lines.append("  observed (workers' stderr, audit snapshots):")
        lines += [f"    {what:<40} {count}" for what, count in sorted(self.seen.items())]
        lines.append("  end state:")
        lines += [f"    {what:<40} {count}" for what, count in sorted(self.outcome.items())]
        lines.append(f"  violations: {len(self.violations)}")
        lines += [f"    {v}" for v in self.violations]
        return "\n".join(lines)


class Corpus:
    """The source directory as the nemesis keeps it, and every content a file ever had there.

    Rows are ``<file number>-<row number>,<n>.25``: unique per file, so a file's rows can be told
    from another's; ``rewrite`` turns one ``.25`` into ``.75`` in place (same size)."""

    def __init__(self, directory: Path, rng: random.Random) -> None:
        self.directory = directory
        self.rng = rng
        self.files: dict[str, list[tuple[str, str]]] = {}  # name -> its rows now
        self.versions: dict[str, Rows[tuple[str, str]]] = {}  # content hash -> its rows
        self.numbers = 0
        self.renames = 0

    @staticmethod
    def text(rows: list[tuple[str, str]]) -> bytes:
        return (HEADER + "".join(f"{oid},{amount}\n" for oid, amount in rows)).encode()

    def _record(self, name: str) -> None:
        self.versions[hash_file(self.directory / name)] = Rows(self.files[name])

    def create(self) -> str:
        number, self.numbers = self.numbers, self.numbers + 1
        rows = [(f"{number}-{i}", f"{i}.25") for i in range(self.rng.randint(1, 400))]
        name = f"f{number:04d}.csv"
        self.files[name] = rows
        (self.directory / name).write_bytes(self.text(rows))  # in place: a scan may see it half-written
        self._record(name)
        return name

    def mutate(self, kind: str) -> None:
        """One change to a random file, in place, as a careless producer would make it."""
        if not self.files:
            return
        name = self.rng.choice(sorted(self.files))
        rows, path = self.files[name], self.directory / name
        if kind == "append":
            number = name[1:5]
            start = len(rows)
            added = [(f"{number}-{start + i}-a{self.rng.randint(0, 10**6)}", f"{i}.25") for i in range(self.rng.randint(1, 40))]
            with open(path, "ab") as handle:
                handle.write(self.text(added)[len(HEADER):])
            self.files[name] = rows + added
        elif kind == "truncate":
            keep = self.rng.randint(0, max(len(rows) - 1, 0))
            os.truncate(path, len(self.text(rows[:keep])))
            self.files[name] = rows[:keep]
        elif kind == "rewrite":
            if not rows:
                return
            index = self.rng.randrange(len(rows))
            oid, amount = rows[index]
            new = amount[:-2] + ("75" if amount.endswith("25") else "25")
            offset = len(self.text(rows[:index])) + len(oid) + 1
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, new.encode(), offset)
            finally:
                os.close(fd)
            self.files[name] = rows[:index] + [(oid, new)] + rows[index + 1:]
        elif kind == "rename":
            self.renames += 1
            new_name = f"{name.removesuffix('.csv')}-r{self.renames}.csv"
            os.rename(path, self.directory / new_name)
            self.files[new_name] = self.files.pop(name)
            return
        elif kind == "delete":
            path.unlink()
            del self.files[name]
            return
        self._record(name)

    def present(self) -> set[str]:
        """The content hashes in the directory now."""
        return {hash_file(self.directory / name) for name in self.files}


class PostgresServer:
    """A throw-away cluster of its own (scripts/pg-server), so that it may be restarted."""

    SCRIPT = str(ROOT / "scripts" / "pg-server")

    def __init__(self) -> None:
        # Under /tmp: the server's user must reach it (pytest's tmp_path is closed to others).
        self.directory = tempfile.mkdtemp(prefix="filedge-faults-pg-", dir="/tmp")
        self.url = self._script("start")

    def _script(self, command: str) -> str:
        done = subprocess.run(["bash", self.SCRIPT, command, self.directory], capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/pg-server {command} failed: {done.stderr.strip()[-500:]}")
        return done.stdout.strip()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", int(Path(self.directory, "port").read_text())

    def restart(self, crash: bool) -> None:
        """Stop the server (as a crash, or a fast shutdown) and start it again on its port."""
        self._script("crash" if crash else "stop")
        url = self._script("start")
        if url != self.url:
            raise RuntimeError(f"the restarted server moved: {url} (was {self.url})")

    def close(self) -> None:
        try:
            self._script("stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _resume(proc: subprocess.Popen[str]) -> None:
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@dataclass
class Nemesis:
    """Keeps WORKERS `filedge run` processes going and hurts them, their files and their
    databases, at random times chosen by ``rng``."""

    ws: Workspace
    corpus: Corpus
    rng: random.Random
    report: Report
    server: PostgresServer | None = None
    proxy: Proxy | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    stopped: list[tuple[subprocess.Popen[str], float]] = field(default_factory=list)
    stopping: set[int] = field(default_factory=set)  # pids sent SIGTERM or SIGINT (once each)
    tokens: dict[str, int] = field(default_factory=dict)  # the highest claim token seen per hash
    last_look: float = 0.0

    def kinds(self) -> list[tuple[str, float]]:
        weights = [("sigkill", 30.0), ("sigstop", 12.0), ("sigterm", 6.0), ("sigint", 4.0),
                   ("append", 6.0), ("truncate", 5.0), ("rewrite", 5.0), ("rename", 5.0), ("delete", 3.0),
                   ("create", 5.0), ("nothing", 10.0)]
        if self.server is not None:
            weights += [("pg_restart", 1.5), ("dest_refused", 2.5)]
        return weights

    def run(self, seconds: float) -> None:
        env = {"FILEDGE_TEST_PAUSE_AT": "mid_insert:0.05"}  # widen the window inside transactions
        names, weights = zip(*self.kinds())
        started = time.monotonic()
        deadline = started + seconds
        # On PostgreSQL, one restart and one refusal at fixed points, whatever the dice say.
        scheduled = [(started + seconds / 3, "pg_restart"), (started + 2 * seconds / 3, "dest_refused")]
        if self.server is None:
            scheduled = []
        while time.monotonic() < deadline:
            self.reap()
            while len(self.procs) < WORKERS:
                self.procs.append(self.ws.popen_run(env=env))
                self.report.faults["started"] += 1
            for proc, until in list(self.stopped):
                if time.monotonic() >= until:
                    _resume(proc)
                    self.stopped.remove((proc, until))
            time.sleep(self.rng.uniform(0.05, 0.4))
            kind = self.rng.choices(names, weights)[0]
            if scheduled and time.monotonic() >= scheduled[0][0]:
                kind = scheduled.pop(0)[1]
            self.inject(kind)
            if time.monotonic() - self.last_look >= 1.0:
                self.look_at_tokens()
        for proc, _ in self.stopped:
            _resume(proc)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.report.faults["stuck"] += 1
        self.reap()

    def look_at_tokens(self) -> None:
        """Claim tokens never go backwards: compare the audit's with the highest seen so far."""
        self.last_look = time.monotonic()
        try:
            audit = self.ws.audit()
        except Exception:  # noqa: BLE001 -- the database may be down right now: look later
            return
        try:
            rows = audit.rows()
        except Exception:  # noqa: BLE001
            return
        finally:
            audit.dispose()
        for row in rows:
            seen = self.tokens.get(row.file_hash, 0)
            if row.claim_token < seen:
                self.report.violations.append(
                    f"{row.file_hash[:12]}: claim token went back from {seen} to {row.claim_token}"
                )
            self.tokens[row.file_hash] = max(seen, row.claim_token)
        self.report.seen["audit snapshots taken (tokens checked)"] += 1

    def reap(self) -> None:
        """Forget the workers that ended, counting what they said on stderr."""
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.procs.remove(proc)
            assert proc.stderr is not None
            said = proc.stderr.read()
            # A traceback is a bug, except a KeyboardInterrupt raised by a SIGINT that came
            # before the interpreter reached filedge's code (site, the first imports).
            lines = said.splitlines()
            if said.count("Traceback (most recent call last)") > lines.count("KeyboardInterrupt"):
                self.report.violations.append(f"a traceback on a worker's stderr: {said.strip()[-500:]}")
            for line in lines:
                if os.environ.get("FILEDGE_FAULTS_VERBOSE"):
                    print(line, file=sys.stderr)
                for needle, meaning in SIGNS:
                    if needle in line:
                        self.report.seen[meaning] += 1
                        if meaning == GRACE_CUT_SHORT:
                            self.report.violations.append(f"{GRACE_CUT_SHORT}: {line.strip()[:300]}")
                        break

    def inject(self, kind: str) -> None:
        victim = self.rng.choice(self.procs)
        if kind in PROCESS_FAULTS:
            if victim.poll() is not None or any(victim is p for p, _ in self.stopped):
                return
            if kind in ("sigterm", "sigint"):
                if victim.pid in self.stopping:  # a second stop signal rightly cuts the file short
                    return
                self.stopping.add(victim.pid)
            if kind == "sigstop":
                # Stopped longer than its lease: reclaimed meanwhile, fenced when it resumes.
                self.stopped.append((victim, time.monotonic() + self.rng.uniform(2.0, 3.0)))
            signals = {"sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP,
                       "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}
            victim.send_signal(signals[kind])
        elif kind == "create":
            self.corpus.create()
        elif kind in FILE_FAULTS:
            self.corpus.mutate(kind)
        elif kind == "pg_restart" and self.server is not None:
            self.server.restart(crash=self.rng.random() < 0.5)
        elif kind == "dest_refused" and self.proxy is not None:
            self.proxy.refuse()
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.proxy.accept()
        else:
            return
        self.report.faults[kind] += 1


def check(ws: Workspace, corpus: Corpus, report: Report) -> None:
    """Exactly once per content, every row accounted for, tokens consistent, status agreeing.

    A file in the directory at the end must be COMMITTED with exactly its rows (or FAILED with a
    reason and no rows). A content that no longer exists may have been loaded while it did:
    then its rows are all there, or none are; a content nobody wrote (a scan that caught a
    file half-written) may be in the audit table but never in the destination."""

    def violation(text: str) -> None:
        report.violations.append(text)

    loaded: dict[str, Rows[tuple[str, str]]] = collections.defaultdict(Rows)
    for file_hash, oid, amount in ws.query("SELECT _filedge_file_hash, order_id, amount FROM orders"):
        loaded[file_hash][(oid, f"{amount:.2f}")] += 1
    present = corpus.present()
    audit = ws.audit()
    try:
        rows = {row.file_hash: row for row in audit.rows()}
        counts = audit.counts()
        history = {file_hash: audit.attempts("orders", file_hash) for file_hash in rows}
    finally:
        audit.dispose()
    ledger = dict(ws.query("SELECT file_hash, claim_token FROM _filedge_loads"))

    for file_hash in set(loaded) - set(corpus.versions):
        violation(f"{file_hash[:12]}: {sum(loaded[file_hash].values())} rows of a content nobody wrote")
    for file_hash, expected in corpus.versions.items():
        got, row, short = loaded.get(file_hash, Rows()), rows.get(file_hash), file_hash[:12]
        if got and got != expected:
            violation(f"{short}: {sum(got.values())} rows in the table, not the file's {sum(expected.values())}"
                      f" (missing {sum((expected - got).values())}, extra {sum((got - expected).values())})")
        if file_hash in present:
            if row is None:
                violation(f"{short}: in the directory but not in the audit table")
            elif row.state == "COMMITTED":
                if got != expected:
                    violation(f"{short}: COMMITTED without all its rows")
                report.outcome["in the directory: COMMITTED"] += 1
            elif row.state == "FAILED" and row.last_error and not got:
                report.outcome["in the directory: FAILED with a reason"] += 1
            else:
                violation(f"{short}: in the directory, left {row.state} ({row.last_error})")
        elif row is None:
            report.outcome["gone before it was seen"] += 1
        elif row.state == "COMMITTED":
            if got != expected:
                violation(f"{short}: COMMITTED without all its rows")
            report.outcome["gone, loaded while it existed"] += 1
        elif row.state == "PROCESSING":
            violation(f"{short}: left PROCESSING")
        elif got:
            # Its rows were committed, then the worker died before the audit commit, and the file
            # went before a retry could settle it: the rows are whole, the audit row stays open.
            report.outcome[f"gone, rows whole, audit {row.state}"] += 1
        else:
            report.outcome[f"gone, not loaded, {row.state}"] += 1
    for file_hash, row in rows.items():
        if row.attempts > RETRY_CAP:
            violation(f"{file_hash[:12]}: {row.attempts} attempts, above retry_cap {RETRY_CAP}")
        if row.state == "COMMITTED" and row.rows_written != sum(corpus.versions.get(file_hash, Rows()).values()):
            violation(f"{file_hash[:12]}: the audit says {row.rows_written} rows")
        if file_hash in ledger and ledger[file_hash] > row.claim_token:
            violation(f"{file_hash[:12]}: ledger token {ledger[file_hash]} ahead of the audit's {row.claim_token}")
        if file_hash not in corpus.versions:
            report.outcome["half-written contents in the audit"] += 1
        check_history(file_hash, row, history[file_hash], violation)
    status = subprocess.run(
        [sys.executable, "-m", "filedge_core.cli", "status", "--json", "--audit-db-url", ws.audit_url],
        capture_output=True, text=True,
    )
    if status.returncode != 0 or json.loads(status.stdout) != counts:
        violation(f"filedge status disagrees with the table: {status.stdout.strip()} vs {counts}")


def check_history(file_hash: str, row: AuditRow, attempts: list[Attempt], violation: Callable[[str], None]) -> None:
    """The attempt history agrees with the audit row: one attempt per claim token, every one
    closed (nothing is PROCESSING any more), the last one the row's outcome."""
    tokens = [a.claim_token for a in attempts]
    if tokens != list(range(1, row.claim_token + 1)):
        violation(f"{file_hash[:12]}: attempts with tokens {tokens}, the audit's token is {row.claim_token}")
        return
    if not attempts:
        return  # registered, never claimed (e.g. gone before a worker got to it)
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


def run(seed: int, seconds: float, files: int, root: Path, postgres: bool = False) -> Report:
    """One campaign; the report lists any violation."""
    rng = random.Random(seed)
    server = PostgresServer() if postgres else None
    proxy = Proxy(server.address) if server else None
    try:
        dest_url = f"postgresql://postgres@127.0.0.1:{proxy.port}/filedge_test" if proxy else None
        ws = Workspace(root, audit_url=server.url if server else None, dest_url=dest_url)
        ws.configure(retry_cap=RETRY_CAP, stale_timeout_minutes=STALE_MINUTES, batch_bytes=BATCH_BYTES)
        corpus = Corpus(ws.incoming, rng)
        for _ in range(files):
            corpus.create()
        report = Report(seed, "postgresql" if postgres else "sqlite")
        Nemesis(ws, corpus, rng, report, server, proxy).run(seconds)
        report.files = len(corpus.versions)
        report.rows = sum(sum(rows.values()) for rows in corpus.versions.values())
        _settle(ws)
        final = ws.run(timeout=300)
        if final.returncode != 0:
            report.violations.append(f"the clean run failed ({final.returncode}): {final.stderr.strip()[-500:]}")
        check(ws, corpus, report)
        return report
    finally:
        if proxy:
            proxy.close()
        if server:
            server.close()


def _settle(ws: Workspace) -> None:
    """Wait out every lease a victim left, then make sure the clean run sees them stale."""
    time.sleep(STALE_MINUTES * 60 + 0.5)
    audit = ws.audit()
    try:
        age_leases(audit)
    finally:
        audit.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the nemesis works (default 1)")
    length.add_argument("--seconds", type=float)
    parser.add_argument("--files", type=int, default=120, help="files at the start (more are created)")
    parser.add_argument("--postgres", action="store_true",
                        help="audit and destination on a throw-away PostgreSQL cluster (else SQLite)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 1)
    with tempfile.TemporaryDirectory(prefix="filedge-faults-") as tmp:
        report = run(args.seed, seconds, args.files, Path(tmp), args.postgres)
    print(report.table())
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
