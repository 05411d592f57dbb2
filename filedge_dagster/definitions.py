"""The only wiring of the code location: one asset and one sensor per pipeline of the set."""

from __future__ import annotations

import dagster as dg

from filedge_core import load_pipeline_set

from .assets import build_ingest_asset
from .resources import FiledgeResource, pipelines_file
from .sensors import build_sensor


def build_definitions(path: str | None = None) -> dg.Definitions:
    """Definitions for the pipeline set at ``path`` (default: ``$FILEDGE_PIPELINES``)."""
    path = path or pipelines_file()
    entries = load_pipeline_set(path)
    return dg.Definitions(
        assets=[build_ingest_asset(entry) for entry in entries],
        sensors=[build_sensor(entry) for entry in entries],
        resources={"filedge": FiledgeResource(pipelines_file=path)},
        executor=dg.in_process_executor,
    )


defs = build_definitions()
