"""One dynamic partitions definition per pipeline, keyed by file content hash."""

from __future__ import annotations

import re

import dagster as dg


def safe_name(pipeline: str) -> str:
    """A pipeline name as Dagster names allow (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", pipeline)


def file_partitions(pipeline: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"filedge_{safe_name(pipeline)}_files")
