"""filedge's core: load files into database tables exactly once, tracked by content hash.

This package never imports Dagster. Its public API is what this module exports."""

from .audit import AuditRow, AuditStore, Claim, ErrorKind, FileState, Reclaimed
from .config import ColumnSpec, ConnectorSpec, PipelineConfig, load_pipeline, parse_pipeline
from .errors import (
    ConfigError,
    DatabaseUnavailable,
    DataError,
    FileChanged,
    FiledgeError,
    LeaseLost,
    TransientError,
    UsageError,
)
from .runner import FileResult, RunSummary, process_claim, run_pipeline, scan_directory, worker_id

__all__ = [
    "AuditRow",
    "AuditStore",
    "Claim",
    "ColumnSpec",
    "ConfigError",
    "ConnectorSpec",
    "DataError",
    "DatabaseUnavailable",
    "ErrorKind",
    "FileChanged",
    "FileResult",
    "FileState",
    "FiledgeError",
    "LeaseLost",
    "PipelineConfig",
    "Reclaimed",
    "RunSummary",
    "TransientError",
    "UsageError",
    "load_pipeline",
    "parse_pipeline",
    "process_claim",
    "run_pipeline",
    "scan_directory",
    "worker_id",
]
