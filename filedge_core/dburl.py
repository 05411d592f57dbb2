"""Database URLs: normalization for SQLAlchemy, SQLite paths, and masking passwords."""

from __future__ import annotations

import re
from pathlib import Path

_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)", re.I)


# libpq also takes the password as a URI parameter (?password=…) or a conninfo keyword.
_PASSWORD_PARAMETER = re.compile(r"(?P<head>(?<![a-z0-9_])password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^&\s]+)", re.I)


def mask(text: str) -> str:
    """Replace every password in URLs (user:password@, ?password=) inside ``text`` with ``***``."""
    text = _PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _PASSWORD_PARAMETER.sub(lambda m: m.group("head") + "***", text)


def scheme(url: str) -> str:
    """The backend of a URL: ``sqlite`` or ``postgresql`` (or whatever else it says)."""
    head = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    return head.split("+", 1)[0].lower()


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL (``:memory:`` for an in-memory database)."""
    if not url.startswith("sqlite:"):
        raise ValueError(f"not a SQLite URL: {url!r}")
    rest = url[len("sqlite:") :]
    if rest in ("", "//", "///", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///"):
        raise ValueError(f"{url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return rest[3:].split("?", 1)[0]


def resolve_sqlite_path(url: str, base_dir: Path) -> str:
    """Make a relative ``sqlite:///file.db`` URL absolute against ``base_dir``; others unchanged."""
    if scheme(url) != "sqlite":
        return url
    path = sqlite_path(url)
    if path == ":memory:" or Path(path).is_absolute():
        return url
    return "sqlite:///" + str((base_dir / path).resolve())


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy should use: PostgreSQL always through psycopg 3."""
    kind = scheme(url)
    if kind in ("postgresql", "postgres"):
        rest = url.split("://", 1)[1]
        return "postgresql+psycopg://" + rest
    if kind == "sqlite":
        sqlite_path(url)  # validates the form
        return url
    raise ValueError(f"unsupported database URL scheme {kind!r} (use sqlite:/// or postgresql://)")
