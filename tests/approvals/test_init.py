"""open_approvals: the backend is chosen by ``[audit] backend`` in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.approvals import SQLiteApprovals, open_approvals
from mcp_guard.approvals.postgres import PostgresApprovals
from mcp_guard.errors import StateError
from mcp_guard.settings import parse_settings

pytestmark = pytest.mark.anyio


async def test_sqlite_in_the_state_file_by_default(tmp_path: Path) -> None:
    settings = parse_settings({"audit": {"state_path": str(tmp_path / "state.db")}}, source="<t>")
    async with open_approvals(settings) as store:
        assert isinstance(store, SQLiteApprovals) and store.path == tmp_path / "state.db"
        assert await store.list() == []
    assert (tmp_path / "state.db").exists()


async def test_postgres_when_the_audit_backend_is(pg_dsn: str) -> None:
    settings = parse_settings({"audit": {"backend": "postgres", "dsn": pg_dsn}}, source="<t>")
    async with open_approvals(settings) as store:
        assert isinstance(store, PostgresApprovals)
        assert await store.list() == []


async def test_an_unusable_state_file_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    settings = parse_settings({"audit": {"state_path": str(tmp_path / "state.db")}}, source="<t>")
    with pytest.raises(StateError):
        async with open_approvals(settings):
            pass
