"""Test helpers shared by every layer: workspaces, pipeline files, the installed command."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def write_pipeline(directory: Path, **overrides: Any) -> Path:
    """A pipeline.yaml like the walkthrough's, with overrides; returns its path."""
    data: dict[str, Any] = {
        "format": "csv",
        "dest_table": "orders",
        "write_mode": "append",
        "retry_cap": 3,
        "stale_timeout_minutes": 30,
        "connector": {"type": "sqlite", "url": "sqlite:///orders.db"},
        "columns": ORDERS_COLUMNS,
    }
    data.update(overrides)
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def orders_csv(n: int, start: int = 1) -> str:
    """CSV text with ``n`` orders numbered from ``start``."""
    lines = ["order_id,amount"] + [f"{i},{i}.50" for i in range(start, start + n)]
    return "\n".join(lines) + "\n"


class Workspace:
    """A temp directory with incoming/, pipeline.yaml, filedge.db and orders.db."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.incoming.mkdir()
        self.audit_url = f"sqlite:///{root / 'filedge.db'}"
        self.dest_path = root / "orders.db"
        self.config_path = write_pipeline(root)

    def configure(self, **overrides: Any) -> PipelineConfig:
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

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``filedge run`` as a real subprocess."""
        return filedge(
            "run", "--dir", str(self.incoming), "--config", str(self.config_path),
            "--audit-db-url", self.audit_url, *extra, cwd=self.root, env=env, timeout=timeout,
        )

    def popen_run(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        cmd = [FILEDGE, "run", "--dir", str(self.incoming), "--config", str(self.config_path), "--audit-db-url", self.audit_url]
        return subprocess.Popen(cmd, cwd=self.root, env={**os.environ, **(env or {})}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def dest_rows(self, table: str = "orders") -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.dest_path) as conn:
            return conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()

    def rows_per_hash(self, table: str = "orders") -> dict[str, int]:
        with sqlite3.connect(self.dest_path) as conn:
            return dict(conn.execute(f'SELECT _filedge_file_hash, COUNT(*) FROM "{table}" GROUP BY 1').fetchall())

    def age_leases(self, seconds: float = 3600) -> None:
        """Make every PROCESSING lease older than ``seconds`` by the database's clock."""
        with sqlite3.connect(self.root / "filedge.db") as conn:
            conn.execute(
                "UPDATE etl_file_audit SET claimed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) WHERE state = 'PROCESSING'",
                (f"-{seconds} seconds",),
            )


def filedge(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``filedge`` command."""
    return subprocess.run([FILEDGE, *args], cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


