"""``filedge verify`` over many committed files: the audit rows, the ledger and the destination
rows are written with direct SQL (loading 100,000 files would take far longer than verifying
them), a few files are damaged, and the installed command is timed.

    .venv/bin/python -m bench.bench_verify [--files 100000] [--rows 3] [--postgres URL]

Prints the wall time of ``filedge verify`` (process start to exit) and its summary line."""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from filedge_core.audit import AuditStore
from filedge_core.config import load_pipeline
from filedge_core.connectors import open_connector

FILEDGE = str(Path(sys.executable).with_name("filedge"))
DAMAGED = 10  # files whose first row is deleted: verify must report exactly these


def _pipeline(root: Path, dest_url: str) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "dest_table": "orders", "write_mode": "append",
        "connector": {"type": "sqlite" if dest_url.startswith("sqlite") else "postgresql", "url": dest_url},
        "columns": [{"source": "order_id", "type": "int"}, {"source": "amount", "type": "float"}],
    }))
    return path


def build(root: Path, files: int, rows: int, postgres: str | None) -> tuple[Path, str]:
    audit_url = postgres or f"sqlite:///{root / 'filedge.db'}"
    config_path = _pipeline(root, postgres or f"sqlite:///{root / 'orders.db'}")
    config = load_pipeline(config_path)
    hashes = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(files)]
    audit = AuditStore(audit_url)
    audit.ensure_schema()
    raw = audit.engine.raw_connection()
    marker = "?" if audit.backend == "sqlite" else "%s"
    cursor = raw.cursor()
    cursor.executemany(
        "INSERT INTO etl_file_audit (pipeline, file_hash, path, size, state, attempts, claim_token, rows_written, "
        f"rows_rejected, created_at, updated_at, committed_at) VALUES ({', '.join([marker] * 12)})",
        [("bench", h, f"/data/f{n:07d}.csv", 100, "COMMITTED", 1, 1, rows, 0, "2026-01-01T00:00:00.000Z",
          "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z") for n, h in enumerate(hashes)],
    )
    raw.commit()
    raw.close()
    audit.dispose()
    connector = open_connector(config)
    connector.prepare()  # the table, its index and the ledger, as filedge makes them
    connector.close()
    ledger = [("bench", h, "orders", 1, rows, "2026-01-01T00:00:00.000Z", f"2026|{n:07d}") for n, h in enumerate(hashes)]
    if postgres is None:
        import sqlite3

        conn = sqlite3.connect(root / "orders.db")
        conn.executemany("INSERT INTO _filedge_loads VALUES (?, ?, ?, ?, ?, ?, ?)", ledger)
        conn.executemany(
            "INSERT INTO orders (order_id, amount, _filedge_file_hash) VALUES (?, ?, ?)",
            ((n * rows + r, 1.5, h) for n, h in enumerate(hashes) for r in range(rows)),
        )
        conn.executemany("DELETE FROM orders WHERE order_id = ?", [(n * rows,) for n in range(DAMAGED)])
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(postgres) as conn, conn.cursor() as cur:
            with cur.copy("COPY _filedge_loads (pipeline, file_hash, dest_table, claim_token, row_count, loaded_at, "
                          "file_order) FROM STDIN") as copy:
                for entry in ledger:
                    copy.write_row(entry)
            data = io.StringIO("".join(f"{n * rows + r}\t1.5\t{h}\t1\n" for n, h in enumerate(hashes) for r in range(rows)))
            with cur.copy("COPY orders (order_id, amount, _filedge_file_hash, _filedge_claim_token) FROM STDIN") as copy:
                while chunk := data.read(1 << 20):
                    copy.write(chunk)
            cur.execute("DELETE FROM orders WHERE order_id = ANY(%s)", ([n * rows for n in range(DAMAGED)],))
            cur.execute("ANALYZE orders")
    return config_path, audit_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=3, help="rows per file")
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database for both (default: SQLite files)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        started = time.perf_counter()
        config_path, audit_url = build(Path(tmp), args.files, args.rows, args.postgres)
        print(f"set-up: {args.files} committed files, {args.files * args.rows} rows in {time.perf_counter() - started:.1f} s")
        for attempt in range(3):
            started = time.perf_counter()
            result = subprocess.run([FILEDGE, "verify", "--config", str(config_path), "--audit-db-url", audit_url],
                                    capture_output=True, text=True, check=False)
            elapsed = time.perf_counter() - started
            lines = result.stdout.splitlines()
            assert result.returncode == 1 and len(lines) == DAMAGED + 1, (result.returncode, lines[-3:], result.stderr)
            print(f"filedge verify #{attempt + 1}: {elapsed:.2f} s  ({lines[-1]})")


if __name__ == "__main__":
    main()
