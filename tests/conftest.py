"""Shared fixtures: real SQLite files in temp dirs, pipeline configs, the installed command."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from filedge_core.audit import AuditStore
from filedge_core.config import PipelineConfig, load_pipeline
from tests.support import FILEDGE, Workspace, write_pipeline


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., PipelineConfig]:
    def make(**overrides: Any) -> PipelineConfig:
        return load_pipeline(write_pipeline(tmp_path, **overrides))

    return make


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditStore]:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    store.ensure_schema()
    yield store
    store.dispose()


def pytest_report_header(config: Any) -> str:
    return f"filedge command: {FILEDGE} ({'found' if shutil.which(FILEDGE) else 'MISSING'})"
