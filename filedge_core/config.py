"""Pipeline configuration: YAML file -> validated ``PipelineConfig``.

This is the one place that decides what a valid configuration is. Errors name the file and
the key (``columns[1].type: unknown type 'flaot'``); unknown keys are errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

from .dburl import mask, resolve_sqlite_path, scheme
from .errors import ConfigError
from .identifiers import check_identifier

COLUMN_TYPES = ("string", "int", "float", "bool", "date", "datetime", "decimal")
CONNECTOR_TYPES = ("sqlite", "postgresql")
FORMATS = ("csv", "tsv", "jsonl", "parquet")
ENCODINGS = ("utf8", "utf8-sig", "latin1")
WRITE_MODES = ("append", "upsert", "replace")
ON_ERROR = ("fail", "quarantine")
# The URL schemes each connector type reads (the first one is the one to suggest).
_URL_SCHEMES = {"sqlite": ("sqlite",), "postgresql": ("postgresql", "postgres")}
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _one_of(kind: str, allowed: tuple[str, ...], value: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r} (expected one of: {', '.join(allowed)})")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Model):
    """One destination column and the source column it is read from."""

    source: str = Field(min_length=1)
    dest: str = ""
    type: str = "string"
    required: bool = False
    default: str | bool | int | float | None = None
    format: str | None = Field(default=None, min_length=1)
    precision: int | None = Field(default=None, ge=1, le=38)
    scale: int | None = Field(default=None, ge=0, le=38)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return _one_of("type", COLUMN_TYPES, value)

    @field_validator("default")
    @classmethod
    def _default_text(cls, value: str | bool | int | float | None) -> str | None:
        if isinstance(value, bool):
            return "true" if value else "false"
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _decimal_shape(self) -> "ColumnSpec":
        if self.type == "decimal":
            if self.precision is None or self.scale is None:
                raise ValueError("a decimal column needs precision and scale (e.g. precision: 12, scale: 2)")
            if self.scale > self.precision:
                raise ValueError(f"scale {self.scale} is larger than precision {self.precision}")
        elif self.precision is not None or self.scale is not None:
            raise ValueError(f"precision and scale apply to decimal columns, not {self.type}")
        return self

    @model_validator(mode="after")
    def _format_and_default_fit(self) -> "ColumnSpec":
        if self.format is not None and self.type not in ("date", "datetime"):
            raise ValueError(f"format applies to date and datetime columns, not {self.type}")
        if self.default is not None and self.format is None and not _parses_as(self.type, self.default):
            raise ValueError(f"default {self.default!r} is not a valid {self.type}")
        return self

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: str) -> str:
        return check_identifier(value) if value else value

    @model_validator(mode="after")
    def _default_dest(self) -> "ColumnSpec":
        if not self.dest:
            object.__setattr__(self, "dest", check_identifier(self.source))
        return self


def _parses_as(kind: str, text: str) -> bool:
    """A light check that a default value reads as its column type."""
    import datetime as dt
    import decimal

    readers = {
        "int": int,
        "float": float,
        "bool": lambda v: {"true": 1, "1": 1, "yes": 1, "false": 0, "0": 0, "no": 0}[v.strip().lower()],
        "date": dt.date.fromisoformat,
        "decimal": lambda v: decimal.Decimal(v.strip()) if decimal.Decimal(v.strip()).is_finite() else int(""),
        "datetime": lambda v: dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00")),
    }
    try:
        readers.get(kind, str)(text)
    except (ValueError, KeyError, ArithmeticError):
        return False
    return True


class ConnectorSpec(_Model):
    """Where the rows go."""

    type: str
    url: str = Field(min_length=1)
    # A server restarting or a network blip: opening a connection is retried (with backoff) for
    # this long before the destination counts as unreachable and the run stops claiming files.
    connect_retry_seconds: float = Field(default=15.0, ge=0)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return _one_of("connector type", CONNECTOR_TYPES, value)


class CsvOptions(_Model):
    """How delimited text is read (the ``csv:`` key; for ``format: tsv`` the delimiter is a tab)."""

    delimiter: str | None = None
    quote_char: str | None = '"'
    has_header: bool = True
    skip_rows: int = Field(default=0, ge=0)
    null_values: list[str] = Field(default_factory=list)
    encoding: str = "utf8"

    @field_validator("delimiter", "quote_char")
    @classmethod
    def _one_char(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) != 1:
            raise ValueError(f"{value!r} must be a single one-byte character")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return _one_of("encoding", ENCODINGS, value)


class AfterCommit(_Model):
    """What happens to a source file once its content is COMMITTED: ``keep`` it, ``delete`` it,
    or ``move`` it into ``directory`` (absolute once loaded)."""

    action: str = "keep"
    directory: str | None = None

    @property
    def cleans_up(self) -> bool:
        """Whether committed files are deleted or moved (anything but ``keep``)."""
        return self.action != "keep"

    @model_validator(mode="after")
    def _consistent(self) -> "AfterCommit":
        if self.action not in ("keep", "delete", "move"):
            raise ValueError(f"{self.action!r}: expected keep, delete, or move: DIR")
        if (self.action == "move") != (self.directory is not None):
            raise ValueError("move needs a directory (move: DIR), and only move takes one")
        return self


def _after_commit(value: Any) -> Any:
    """``keep``, ``delete`` or ``{move: DIR}`` in the YAML, as an ``AfterCommit``."""
    if isinstance(value, AfterCommit):
        return value
    if value in ("keep", "delete"):
        return {"action": value}
    if isinstance(value, dict) and set(value) == {"move"}:
        target = value["move"]
        if not isinstance(target, str) or not target.strip():
            raise ValueError("move: expected a directory")
        return {"action": "move", "directory": target}
    if isinstance(value, dict) and "action" in value and set(value) <= {"action", "directory"}:
        return value  # the normalized form (a configuration dumped and read back)
    raise ValueError(f"{value!r}: expected keep, delete, or move: DIR")


class PipelineConfig(_Model):
    """A validated pipeline. ``url`` of the connector is already resolved (env vars, paths)."""

    name: str = ""
    format: str = "csv"
    dest_table: str
    write_mode: str = "append"
    retry_cap: int = Field(default=3, ge=1)
    stale_timeout_minutes: float = Field(default=30, gt=0)
    connector: ConnectorSpec
    columns: list[ColumnSpec] = Field(min_length=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    strict_columns: bool = False
    key: list[str] = Field(default_factory=list)
    on_error: str = "fail"
    max_rejected: int | str | None = None
    batch_bytes: ByteSize = Field(default=ByteSize(8 * 1024 * 1024), ge=1)
    after_commit: AfterCommit = Field(default_factory=AfterCommit)

    @field_validator("after_commit", mode="before")
    @classmethod
    def _after_commit(cls, value: Any) -> Any:
        return _after_commit(value)

    @field_validator("on_error")
    @classmethod
    def _on_error(cls, value: str) -> str:
        return _one_of("on_error", ON_ERROR, value)

    @field_validator("max_rejected")
    @classmethod
    def _max_rejected(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, bool):
            raise ValueError("expected a count (e.g. 100) or a percentage (e.g. '5%')")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"{value} is negative")
            return value
        if value is None:
            return None
        text = value.strip()
        number = text[:-1].strip() if text.endswith("%") else None
        try:
            percent = float(number) if number is not None else None
        except ValueError:
            percent = None
        if percent is None or not 0 <= percent <= 100:
            raise ValueError(f"{value!r}: expected a count (e.g. 100) or a percentage from 0% to 100% (e.g. '5%')")
        return f"{percent:g}%"

    @model_validator(mode="after")
    def _mode_keys(self) -> "PipelineConfig":
        if self.max_rejected is not None and self.on_error != "quarantine":
            raise ValueError("max_rejected applies with on_error: quarantine")
        if self.on_error == "quarantine":
            try:
                check_identifier(self.rejected_table, qualified=True)
            except ValueError:
                raise ValueError(
                    f"dest_table {self.dest_table!r} is too long for its quarantine table {self.rejected_table!r}"
                ) from None
        if self.write_mode != "upsert":
            if self.key:
                raise ValueError(f"key applies to write_mode: upsert, not {self.write_mode}")
            return self
        if not self.key:
            raise ValueError("write_mode upsert needs key: the columns that identify a row (e.g. key: [order_id])")
        by_name = {c.dest.lower(): c for c in self.columns} | {c.source.lower(): c for c in self.columns}
        dests: list[str] = []
        for name in self.key:
            column = by_name.get(name.lower())
            if column is None:
                raise ValueError(f"key column {name!r} is not one of the configured columns")
            if column.dest in dests:
                raise ValueError(f"key column {name!r} appears twice")
            dests.append(column.dest)
        # A row without its key could not be merged: key columns are required.
        columns = [c.model_copy(update={"required": True}) if c.dest in dests else c for c in self.columns]
        object.__setattr__(self, "key", dests)
        object.__setattr__(self, "columns", columns)
        return self

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return _one_of("format", FORMATS, value)

    @field_validator("write_mode")
    @classmethod
    def _write_mode(cls, value: str) -> str:
        return _one_of("write_mode", WRITE_MODES, value)

    @field_validator("dest_table")
    @classmethod
    def _dest_table(cls, value: str) -> str:
        return check_identifier(value, qualified=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_.\-]{1,200}$", value):
            raise ValueError(f"{value!r}: use letters, digits, '_', '-' and '.'")
        return value

    @field_validator("columns")
    @classmethod
    def _unique_dest(cls, columns: list[ColumnSpec]) -> list[ColumnSpec]:
        seen: set[str] = set()
        for column in columns:
            key = column.dest.lower()
            if key in seen:
                raise ValueError(f"destination column {column.dest!r} appears twice")
            if key.startswith("_filedge"):
                raise ValueError(f"{column.dest!r}: names starting with '_filedge' are reserved")
            seen.add(key)
        return columns

    @model_validator(mode="after")
    def _default_name(self) -> "PipelineConfig":
        if not self.name:
            object.__setattr__(self, "name", self.dest_table)
        return self

    @property
    def delimiter(self) -> str:
        """The field delimiter: ``csv.delimiter``, else a tab for tsv and a comma for csv."""
        return self.csv.delimiter or ("\t" if self.format == "tsv" else ",")

    @property
    def max_rejected_count(self) -> int | None:
        return self.max_rejected if isinstance(self.max_rejected, int) else None

    @property
    def max_rejected_percent(self) -> float | None:
        return float(self.max_rejected[:-1]) if isinstance(self.max_rejected, str) else None

    @property
    def rejected_table(self) -> str:
        """Where quarantined rows go: ``<dest_table>_rejected`` (in the same schema)."""
        return f"{self.dest_table}_rejected"

    @property
    def stale_timeout_seconds(self) -> float:
        return self.stale_timeout_minutes * 60.0

    @property
    def config_hash(self) -> str:
        """SHA-256 of the normalized configuration (recorded with every file)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"])


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line naming the file, the first offending key and what is wrong with it."""
    errors = exc.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {_loc(first['loc'])}: {_describe(first)}{more}"


def expand_env(url: str, source: str, key: str = "connector.url") -> str:
    """``${VAR}`` replaced from the environment; a ConfigError naming ``key`` if one is unset."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{source}: {key}: environment variable {name!r} is not set")
        return os.environ[name]

    return _ENV_VAR.sub(repl, url)


def parse_pipeline(data: Any, source: str = "<config>", base_dir: Path | None = None) -> PipelineConfig:
    """Validate an already-parsed mapping. Relative SQLite paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    url = expand_env(config.connector.url, source)
    expected = _URL_SCHEMES[config.connector.type]
    if scheme(url) not in expected:
        raise ConfigError(
            f"{source}: connector.url: {mask(url)!r} is not a {expected[0]}:// URL "
            f"(connector.type is {config.connector.type})"
        )
    try:
        url = resolve_sqlite_path(url, base_dir or Path.cwd())
    except ValueError as exc:
        raise ConfigError(f"{source}: connector.url: {mask(str(exc))}") from None
    connector = config.connector.model_copy(update={"url": url})
    update: dict[str, Any] = {"connector": connector}
    if config.after_commit.directory is not None:
        target = Path(os.path.expanduser(expand_env(config.after_commit.directory, source, "after_commit.move")))
        target = target if target.is_absolute() else (base_dir or Path.cwd()) / target
        update["after_commit"] = config.after_commit.model_copy(update={"directory": str(target)})
    return config.model_copy(update=update)


def load_pipeline(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None
    return parse_pipeline(data, str(path), path.resolve().parent)
