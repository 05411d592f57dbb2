"""Fixtures for tests against a real PostgreSQL server.

``FILEDGE_TEST_POSTGRES_URL`` names the server (``scripts/pg-server`` starts one and prints it).
Without it the PostgreSQL tests are skipped, except in CI (``CI`` set), where they fail: a CI run
that silently skipped them would prove nothing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

URL_VARIABLE = "FILEDGE_TEST_POSTGRES_URL"
SKIP_MESSAGE = f"set {URL_VARIABLE} (scripts/pg-server prints one) to run PostgreSQL tests"


def libpq_url(url: str) -> str:
    """``url`` without a SQLAlchemy-style ``+driver`` suffix, as libpq reads it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test server's URL (its database is left alone; see ``pg_database``)."""
    url = os.environ.get(URL_VARIABLE)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(
                f"{URL_VARIABLE} is not set, and in CI the PostgreSQL tests must run: "
                "start a server with `export FILEDGE_TEST_POSTGRES_URL=$(scripts/pg-server)`",
                pytrace=False,
            )
        pytest.skip(SKIP_MESSAGE)
    return libpq_url(url)


@pytest.fixture
def pg_admin(pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the server's own database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg_database(pg_url: str, pg_admin: psycopg.Connection) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = f"filedge_test_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(pg_url, name)
    finally:
        pg_admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_conn(pg_database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the fresh database, to look at what the connector did."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        yield conn
