"""The resource through which Dagster reaches filedge's core: it builds core objects, no logic."""


import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from filedge_core import AuditStore, PipelineEntry, load_pipeline_set

DEFAULT_PIPELINES = Path(__file__).resolve().parent.parent / "examples" / "orders" / "pipelines.yaml"


def pipelines_file() -> str:
    """The pipeline set this code location serves: ``$FILEDGE_PIPELINES`` or the bundled example."""
    return os.environ.get("FILEDGE_PIPELINES") or str(DEFAULT_PIPELINES)


class FiledgeResource(dg.ConfigurableResource):
    """Pipelines and audit stores of one pipeline set file."""

    pipelines_file: str

    _entries: dict[str, PipelineEntry] = PrivateAttr(default_factory=dict)
    _audits: dict[str, AuditStore] = PrivateAttr(default_factory=dict)

    def pipeline(self, name: str) -> PipelineEntry:
        if not self._entries:
            self._entries.update({entry.name: entry for entry in load_pipeline_set(self.pipelines_file)})
        return self._entries[name]

    def audit(self, name: str) -> AuditStore:
        """The audit store of a pipeline (one per process, schema ensured)."""
        url = self.pipeline(name).audit_db_url
        if url not in self._audits:
            store = AuditStore(url)
            store.ensure_schema()
            self._audits[url] = store
        return self._audits[url]
