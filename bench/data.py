"""Deterministic benchmark data: the 8-column CSV, many small files, a committed audit table."""

from __future__ import annotations

from pathlib import Path

HEADER = "id,customer,region,qty,amount,paid,day,created_at\n"
# The pipeline's columns for that CSV (strings, ints, float, bool, date, datetime).
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


def rows_text(start: int, stop: int) -> str:
    return "".join(
        f"{i},customer-{i % 10007},region-{i % 13},{i % 100},{i * 0.25:.2f},"
        f"{'true' if i % 2 else 'false'},2024-{1 + i % 12:02d}-{1 + i % 28:02d},"
        f"2024-01-02T03:{i % 60:02d}:{(i * 7) % 60:02d}Z\n"
        for i in range(start, stop)
    )


def write_csv(path: Path, rows: int, start: int = 0) -> Path:
    """``rows`` rows numbered from ``start``."""
    with path.open("w") as out:
        out.write(HEADER)
        for first in range(start, start + rows, 100_000):
            out.write(rows_text(first, min(start + rows, first + 100_000)))
    return path


def write_csv_of_size(path: Path, target_bytes: int) -> int:
    """About ``target_bytes`` of rows; returns the row count."""
    rows = 0
    with path.open("w") as out:
        out.write(HEADER)
        while out.tell() < target_bytes:
            out.write(rows_text(rows, rows + 100_000))
            rows += 100_000
    return rows


def write_small_files(directory: Path, files: int, rows: int) -> None:
    """``files`` CSV files of ``rows`` rows each, all different."""
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        (directory / f"f{n:06d}.csv").write_text(HEADER + rows_text(n * rows, (n + 1) * rows))
