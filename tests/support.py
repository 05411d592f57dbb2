"""Test helpers shared by every layer: workspaces, pipeline files, the installed command."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from filedge_core.audit import AuditStore
from filedge_core.config import PipelineConfig, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CSV_SPECTRUM = ROOT / "tests" / "data" / "csv-spectrum"
FILEDGE = str(Path(sys.executable).with_name("filedge"))
ORDERS_COLUMNS = [
    {"source": "order_id", "dest": "order_id", "type": "string", "required": True},
    {"source": "amount", "dest": "amount", "type": "float", "required": True},
]


# The walkthrough's pipeline.yaml, as data.
WALKTHROUGH_CONFIG: dict[str, Any] = {
    "format": "csv",
    "dest_table": "orders",
    "write_mode": "append",
    "retry_cap": 3,
    "stale_timeout_minutes": 30,
    "connector": {"type": "sqlite", "url": "sqlite:///orders.db"},
    "columns": ORDERS_COLUMNS,
}


def write_pipeline(directory: Path, **overrides: Any) -> Path:
    """A pipeline.yaml like the walkthrough's, with overrides; returns its path."""
    data = {**WALKTHROUGH_CONFIG, **overrides}
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def orders_csv(n: int, start: int = 1) -> str:
    """CSV text with ``n`` orders numbered from ``start``."""
    lines = ["order_id,amount"] + [f"{i},{i}.50" for i in range(start, start + n)]
    return "\n".join(lines) + "\n"


def age_leases(audit: AuditStore, seconds: float = 3600) -> None:
    """Make every PROCESSING lease ``seconds`` old by the audit database's own clock."""
    if audit.backend == "sqlite":
        expr = f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{seconds} seconds')"
    else:
        expr = f"now() - interval '{seconds} seconds'"
    with audit.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE etl_file_audit SET claimed_at = {expr} WHERE state = 'PROCESSING'"))


def age_attempts(audit: AuditStore, seconds: float, file_hash: str | None = None) -> None:
    """Make the ended attempts (of one file, or all) end ``seconds`` ago by the database's clock."""
    if audit.backend == "sqlite":
        expr = f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{seconds} seconds')"
    else:
        expr = f"now() - interval '{seconds} seconds'"
    where = "ended_at IS NOT NULL" + (" AND file_hash = :h" if file_hash else "")
    with audit.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE etl_file_attempts SET ended_at = {expr} WHERE {where}"), {"h": file_hash})


def libpq_url(url: str) -> str:
    """``url`` without a SQLAlchemy-style ``+driver`` suffix, as libpq reads it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


class Workspace:
    """A temp directory with incoming/ and pipeline.yaml; the audit table and the destination in
    SQLite files there (filedge.db, orders.db) unless PostgreSQL URLs are given."""

    def __init__(self, root: Path, audit_url: str | None = None, dest_url: str | None = None) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.incoming.mkdir()
        self.audit_url = audit_url or f"sqlite:///{root / 'filedge.db'}"
        self.dest_url = dest_url or "sqlite:///orders.db"
        self.dest_path = root / "orders.db"
        self.config_path = root / "pipeline.yaml"
        self.configure()

    @property
    def connector(self) -> dict[str, str]:
        return {"type": "sqlite" if self.dest_url.startswith("sqlite") else "postgresql", "url": self.dest_url}

    def configure(self, **overrides: Any) -> PipelineConfig:
        overrides.setdefault("connector", self.connector)
        self.config_path = write_pipeline(self.root, **overrides)
        return self.config()

    def config(self) -> PipelineConfig:
        return load_pipeline(self.config_path)

    def audit(self) -> AuditStore:
        store = AuditStore(self.audit_url)
        store.ensure_schema()
        return store

    def add(self, name: str, text: str | bytes) -> Path:
        path = self.incoming / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    def run_args(self, *extra: str) -> list[str]:
        return [FILEDGE, "run", "--dir", str(self.incoming), "--config", str(self.config_path),
                "--audit-db-url", self.audit_url, *extra]

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``filedge run`` as a real subprocess."""
        return subprocess.run(self.run_args(*extra), cwd=self.root, env={**os.environ, **(env or {})},
                              text=True, capture_output=True, timeout=timeout)

    def popen_run(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.run_args(*extra), cwd=self.root, env={**os.environ, **(env or {})},
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the destination database."""
        if self.dest_url.startswith("sqlite"):
            if not self.dest_path.exists():
                return []
            with sqlite3.connect(self.dest_path) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(libpq_url(self.dest_url)) as conn:
            return conn.execute(sql).fetchall()

    def execute(self, sql: str) -> None:
        """Run a statement on the destination database and commit it."""
        if self.dest_url.startswith("sqlite"):
            with sqlite3.connect(self.dest_path) as conn:
                conn.execute(sql)
            return
        import psycopg

        with psycopg.connect(libpq_url(self.dest_url)) as conn:
            conn.execute(sql)

    def dest_rows(self, table: str = "orders") -> list[tuple[Any, ...]]:
        return self.query(f'SELECT * FROM {table}')

    def rows_per_hash(self, table: str = "orders") -> dict[str, int]:
        return dict(self.query(f"SELECT _filedge_file_hash, COUNT(*) FROM {table} GROUP BY 1"))

    def ledger(self) -> dict[str, int]:
        return dict(self.query("SELECT file_hash, row_count FROM _filedge_loads"))

    def age_leases(self, seconds: float = 3600) -> None:
        """Make every PROCESSING lease older than ``seconds`` by the database's clock."""
        audit = self.audit()
        try:
            age_leases(audit, seconds)
        finally:
            audit.dispose()


def filedge(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``filedge`` command."""
    return subprocess.run([FILEDGE, *args], cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


@contextmanager
def watching(ws: Workspace, *extra: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`filedge run --watch …` as a process; killed if the test ends before stopping it."""
    proc = ws.popen_run("--watch", *extra, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM, timeout: float = 30) -> tuple[str, str]:
    """Signal a process and collect its output."""
    proc.send_signal(signum)
    return proc.communicate(timeout=timeout)


def configure_write_mode(ws: Workspace, mode: str) -> PipelineConfig:
    """The write-mode tests' pipeline: int order ids (the upsert key), exact decimal amounts,
    bad rows quarantined."""
    return ws.configure(
        write_mode=mode,
        on_error="quarantine",
        columns=[
            {"source": "order_id", "type": "int", "required": True},
            {"source": "amount", "type": "decimal", "precision": 10, "scale": 2, "required": True},
        ],
        **({"key": ["order_id"]} if mode == "upsert" else {}),
    )

