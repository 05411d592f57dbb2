"""A set of pipelines to run together (the Dagster code location reads one):

    pipelines:
      - name: orders                       # optional; default: the pipeline config's name
        dir: incoming                      # the watched directory
        config: pipeline.yaml              # the pipeline config
        audit_db_url: sqlite:///filedge.db # default sqlite:///filedge.db
        sensor_interval_seconds: 30        # Dagster sensor interval (default 30)
        run_batch_size: 200                # files per Dagster run at most (default 200)

Paths, and relative ``sqlite:///`` audit URLs, resolve against the set file's directory;
``${VAR}`` in ``audit_db_url`` is read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import PipelineConfig, expand_env, format_validation_error, load_pipeline
from .dburl import resolve_sqlite_path
from .errors import ConfigError


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    dir: str = Field(min_length=1)
    config: str = Field(min_length=1)
    audit_db_url: str = "sqlite:///filedge.db"
    sensor_interval_seconds: int = Field(default=30, ge=1)
    run_batch_size: int = Field(default=200, ge=1)


class _PipelineSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: list[_Entry] = Field(min_length=1)


@dataclass(frozen=True)
class PipelineEntry:
    """One pipeline of a set: its validated config, watched directory and audit database."""

    name: str
    directory: Path
    config: PipelineConfig
    audit_db_url: str
    sensor_interval_seconds: int = 30
    run_batch_size: int = 200


def load_pipeline_set(path: str | os.PathLike[str]) -> list[PipelineEntry]:
    """Read a pipeline set file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from None
    try:
        parsed = _PipelineSet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
    base = path.resolve().parent
    entries: list[PipelineEntry] = []
    for index, entry in enumerate(parsed.pipelines):
        config = load_pipeline(base / entry.config)
        if entry.name and entry.name != config.name:
            try:
                config = PipelineConfig.model_validate({**config.model_dump(), "name": entry.name})
            except ValidationError as exc:
                raise ConfigError(format_validation_error(f"{path}: pipelines[{index}]", exc)) from None
        if any(e.name == config.name for e in entries):
            raise ConfigError(f"{path}: pipelines[{index}].name: pipeline {config.name!r} appears twice")
        try:
            audit_url = resolve_sqlite_path(
                expand_env(entry.audit_db_url, str(path), f"pipelines[{index}].audit_db_url"), base
            )
        except ValueError as exc:
            raise ConfigError(f"{path}: pipelines[{index}].audit_db_url: {exc}") from None
        entries.append(
            PipelineEntry(
                config.name, base / entry.dir, config, audit_url, entry.sensor_interval_seconds, entry.run_batch_size
            )
        )
    return entries
