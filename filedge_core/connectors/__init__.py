"""Destination connectors: one transaction per file, fenced by the claim token."""

from __future__ import annotations

from ..config import PipelineConfig
from .base import LEDGER_TABLE, Connector, FileWrite


def open_connector(config: PipelineConfig) -> Connector:
    """The connector for ``config.connector.type``, not yet connected."""
    if config.connector.type == "sqlite":
        from .sqlite import SqliteConnector

        return SqliteConnector(config)
    if config.connector.type == "postgresql":
        from .postgresql import PostgresConnector

        return PostgresConnector(config)
    from ..errors import ConfigError

    raise ConfigError(f"connector.type: {config.connector.type!r} is not available yet")


__all__ = ["LEDGER_TABLE", "Connector", "FileWrite", "open_connector"]
