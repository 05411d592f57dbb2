"""SQL identifiers that come from configuration: validated once, always quoted."""

from __future__ import annotations

import re

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# The column that tags every destination row with the hash of the file it came from (here, not
# in connectors/, so that `filedge show` can name it without importing polars).
HASH_COLUMN = "_filedge_file_hash"


def check_identifier(name: str, *, qualified: bool = False) -> str:
    """Return ``name`` if it is a plain SQL identifier (``schema.table`` when ``qualified``).

    Raises ``ValueError`` with a readable reason otherwise."""
    parts = name.split(".") if qualified else [name]
    if qualified and len(parts) > 2:
        raise ValueError(f"{name!r} has more than one '.'; use 'table' or 'schema.table'")
    for part in parts:
        if not _PART.match(part):
            raise ValueError(
                f"{name!r} is not a valid identifier: use letters, digits and '_', "
                "not starting with a digit, at most 63 characters"
            )
    return name


def quote(name: str) -> str:
    """Quote a validated (possibly schema-qualified) identifier."""
    return ".".join(f'"{part}"' for part in name.split("."))
