"""Pipeline set files (what the Dagster code location serves)."""

from __future__ import annotations

from pathlib import Path

import pytest

from filedge_core.errors import ConfigError
from filedge_core.pipeline_set import load_pipeline_set
from tests.support import write_pipeline


def write_set(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return path


def test_paths_resolve_against_the_set_file(tmp_path: Path, monkeypatch) -> None:
    write_pipeline(tmp_path)
    monkeypatch.setenv("FILEDGE_TEST_AUDIT_DB", "audit.db")
    entries = load_pipeline_set(write_set(tmp_path, (
        "pipelines:\n"
        "  - {dir: incoming, config: pipeline.yaml, audit_db_url: 'sqlite:///${FILEDGE_TEST_AUDIT_DB}'}\n"
        "  - {name: orders_copy, dir: other, config: pipeline.yaml, sensor_interval_seconds: 5}\n"
    )))
    first, second = entries
    assert (first.name, first.directory, first.audit_db_url) == ("orders", tmp_path / "incoming", f"sqlite:///{tmp_path / 'audit.db'}")
    assert (first.sensor_interval_seconds, first.run_batch_size) == (30, 200)
    assert (second.name, second.config.name, second.sensor_interval_seconds) == ("orders_copy", "orders_copy", 5)
    assert second.audit_db_url == f"sqlite:///{tmp_path / 'filedge.db'}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("pipelines: []\n", "pipelines.yaml: pipelines: List should have at least 1 item"),
        ("pipelines:\n  - {dir: x, config: pipeline.yaml, extra: 1}\n", "pipelines[0].extra: unknown key"),
        ("pipelines:\n  - {config: pipeline.yaml}\n", "pipelines[0].dir: required key is missing"),
        ("pipelines:\n  - {dir: x, config: nope.yaml}\n", "nope.yaml: no such file"),
        ("pipelines:\n  - {dir: x, config: pipeline.yaml}\n  - {dir: y, config: pipeline.yaml}\n", "pipeline 'orders' appears twice"),
        ("pipelines:\n  - {dir: x, config: pipeline.yaml, audit_db_url: 'sqlite:///${FILEDGE_TEST_UNSET_VAR}'}\n",
         "pipelines[0].audit_db_url: environment variable 'FILEDGE_TEST_UNSET_VAR' is not set"),
        ("pipelines:\n  - {name: 'bad name', dir: x, config: pipeline.yaml}\n", "pipelines[0]: name:"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    write_pipeline(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_pipeline_set(write_set(tmp_path, text))
    assert message in str(info.value)
