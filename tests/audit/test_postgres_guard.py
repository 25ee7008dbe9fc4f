"""The proxy on the PostgreSQL backend: a call's rows are in the database before it is forwarded and
answered; a PostgreSQL that hangs denies calls with ``audit_unavailable`` and none reaches the upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from guard_harness import client_of, make_settings, read_log, recorder_upstream, running_guard, text_of
from mcp_guard.audit import AuditWriter
from mcp_guard.audit.postgres import open_postgres, open_postgres_reader
from mcp_guard.audit.verify import verify_chain
from pg_support import hanging_proxy

pytestmark = pytest.mark.anyio


def _calls(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute("SELECT kind, tool, decision FROM audit_events WHERE kind LIKE 'call.%' ORDER BY seq"))


async def test_a_hung_postgres_denies_calls_and_none_reaches_the_upstream(pg_dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    settings = make_settings({"rec": recorder_upstream(log)})
    async with (
        hanging_proxy(pg_dsn) as proxy,
        open_postgres(proxy.dsn(pg_dsn), timeout=1.0) as backend,
        AuditWriter.running(backend, record_timeout=0.5) as sink,
        running_guard(settings, sink=sink) as guard,  # type: ignore[arg-type]
        client_of(guard) as client,
    ):
        r = await client.call_tool("rec__echo", {"text": "before"})
        assert not r.is_error, text_of(r)
        assert _calls(pg_dsn) == [("call.decision", "echo", "allow"), ("call.result", "echo", None)]

        proxy.hang()
        with anyio.fail_after(10):
            r = await client.call_tool("rec__echo", {"text": "while hung"})
        assert r.is_error and "audit_unavailable" in text_of(r)
        proxy.recover()

    forwarded = [entry for entry in read_log(log) if entry.get("method") == "tools/call"]
    assert all("while hung" not in str(entry) for entry in forwarded)
    assert any("before" in str(entry) for entry in forwarded)
    with open_postgres_reader(pg_dsn) as reader:
        assert verify_chain(reader).ok
