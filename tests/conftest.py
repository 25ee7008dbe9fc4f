"""Suite-wide fixtures: async tests run on anyio's built-in pytest plugin, asyncio backend.

PostgreSQL for the tests that need one (found or started, never skipped): ``pg_server``, ``pg_dsn``
and ``pg_admin`` from tests/pg_support.py.
"""

from __future__ import annotations

import pytest

from pg_support import pg_admin, pg_dsn, pg_server

__all__ = ["pg_admin", "pg_dsn", "pg_server"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
