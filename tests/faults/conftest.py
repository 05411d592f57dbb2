"""The PostgreSQL fixtures of the integration tests, for the fault campaigns too."""

from tests.integration.conftest import pg_admin, pg_database, pg_url  # noqa: F401
