"""filedge's core: load files into database tables exactly once, tracked by content hash.

This package never imports Dagster. Its public API is what this module exports; the names are
imported on first use, so that ``filedge --help`` and ``filedge status`` do not pay for polars."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported: the `filedge` command starts with this module

_EXPORTS = {
    "audit": ["Attempt", "AuditRow", "AuditStore", "Claim", "ErrorKind", "FileState", "Outcome", "Reclaimed"],
    "config": ["ColumnSpec", "ConnectorSpec", "PipelineConfig", "load_pipeline", "parse_pipeline"],
    "errors": [
        "ConfigError",
        "DatabaseUnavailable",
        "DataError",
        "FileChanged",
        "FiledgeError",
        "LeaseLost",
        "TransientError",
        "UsageError",
    ],
    "runner": [
        "FileResult",
        "RunPlan",
        "RunSummary",
        "WorkItem",
        "plan_run",
        "process_claim",
        "process_file",
        "run_pipeline",
        "scan_directory",
        "work",
        "worker_id",
    ],
    "connectors": ["Connector", "open_connector"],
    "pipeline_set": ["PipelineEntry", "load_pipeline_set"],
    "report": ["FileReport", "file_report"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'filedge_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from typing import Any

    from .audit import Attempt, AuditRow, AuditStore, Claim, ErrorKind, FileState, Outcome, Reclaimed
    from .config import ColumnSpec, ConnectorSpec, PipelineConfig, load_pipeline, parse_pipeline
    from .connectors import Connector, open_connector
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
    from .pipeline_set import PipelineEntry, load_pipeline_set
    from .report import FileReport, file_report
    from .runner import (
        FileResult,
        RunPlan,
        RunSummary,
        WorkItem,
        plan_run,
        process_claim,
        process_file,
        run_pipeline,
        scan_directory,
        work,
        worker_id,
    )
