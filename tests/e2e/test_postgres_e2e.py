"""End to end on PostgreSQL: two `mcp-guard run --transport http` replicas on one DSN, real clients calling
both at once, then `mcp-guard audit verify` on the DSN: one chain holding both replicas' rows."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psycopg
import pytest
from e2e_support import API_KEY, POLL_S, REPO, http_guard, time_server, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CALLS = 12  # per client; two clients per replica (one per protocol era)


def _replica_config(tmp: Path, dsn: str) -> Path:
    """A config of its own (own state file) whose audit log is the shared PostgreSQL DSN."""
    tmp.mkdir()
    cfg = write_config(tmp, {"time": time_server()})
    text = cfg.read_text()
    old = f"[audit]\npath = {json.dumps(str(tmp / 'audit.db'))}\n"
    assert old in text
    cfg.write_text(text.replace(old, f'[audit]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n'))
    return cfg


def _client(url: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=60.0)  # type: ignore[arg-type]


async def _drive(url: str, mode: str, answered: list[str]) -> None:
    """Wait for the time upstream, then call it CALLS times; every answer is counted."""
    async with _client(url, mode) as client:
        with anyio.fail_after(60):
            while not any(t.name == "time__get_current_time" for t in (await client.list_tools()).tools):  # noqa: ASYNC110
                await anyio.sleep(POLL_S)
        for _ in range(CALLS):
            r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not r.is_error, r
            assert any(isinstance(c, types.TextContent) and "UTC" in c.text for c in r.content)
            answered.append(url)


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql))


async def test_two_replicas_on_one_dsn_write_one_verifiable_chain(pg_dsn: str, tmp_path: Path) -> None:
    configs = [_replica_config(tmp_path / name, pg_dsn) for name in ("replica-a", "replica-b")]
    answered: list[str] = []
    with ExitStack() as stack:
        urls = [stack.enter_context(http_guard(cfg, tmp_path / f"guard-{i}.log")) for i, cfg in enumerate(configs)]
        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for url in urls:
                    for mode in ("legacy", "2026-07-28"):
                        tg.start_soon(_drive, url, mode, answered)
    assert len(answered) == 2 * 2 * CALLS
    for cfg in configs:
        assert not (cfg.parent / "audit.db").exists()  # nothing went to a SQLite file

    # Both replicas' rows, in one chain: a decision and an outcome for every answered call.
    kinds = dict(_rows(pg_dsn, "SELECT kind, count(*) FROM audit_events GROUP BY kind"))
    assert kinds.get("call.decision") == kinds.get("call.result") == len(answered)
    sources = {r[0] for r in _rows(pg_dsn, "SELECT details FROM audit_events WHERE kind = 'config.load'")}
    assert {json.loads(s)["source"] for s in sources} == {str(cfg) for cfg in configs}
    seqs = [r[0] for r in _rows(pg_dsn, "SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))

    argv = [sys.executable, "-m", "mcp_guard", "audit", "verify", "--config", str(configs[0]), "--json"]
    with anyio.fail_after(60):
        done = await anyio.run_process(argv, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(done.stdout)
    assert result["ok"] and result["rows"] == len(seqs) and result["head"]["seq"] == seqs[-1]
    assert result["warnings"] == []
