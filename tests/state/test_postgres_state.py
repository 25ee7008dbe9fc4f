"""PostgresState beyond the shared contract: replicas racing for the last slot, the database's clock, a server
that hangs or cuts connections (StateError, then recovery), and open_state choosing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from mcp_guard.errors import StateError
from mcp_guard.settings import parse_settings
from mcp_guard.state import FlowBounds, FlowCall, FlowFull, FlowRef, FlowTicket, Limit, open_state
from mcp_guard.state.postgres import PostgresState, lock_key
from pg_support import cut_guard_connections, hanging_proxy

pytestmark = pytest.mark.anyio

SRC = Path(__file__).resolve().parents[2] / "src"

_WORKER = """
import anyio, json, sys
from mcp_guard.state import Limit
from mcp_guard.state.postgres import PostgresState

async def main(dsn, n):
    store = PostgresState(dsn, timeout_s=30.0)
    await store.start()
    async def one(results):
        a = await store.admit([Limit("shared", 25, 3600.0), Limit("other", 1000, 60.0)])
        results.append(a.admitted)
    results = []
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one, results)
    await store.aclose()
    print(json.dumps(sum(results)))

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def call(did: str, *labels: str) -> FlowCall:
    return FlowCall(did, "tools/call", "tickets", "get_ticket", "allow", labels, "2026-01-01T00:00:00Z")


def test_three_replica_processes_never_admit_past_the_limit(pg_dsn: str, pg_admin: psycopg.Connection[Any]) -> None:
    """Three processes, each with its own pool of connections and 40 concurrent admissions, one limit of 25."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, pg_dsn, "40"], stdout=subprocess.PIPE, env={"PYTHONPATH": str(SRC)}
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(int(json.loads(o)) for o in outputs) == 25
    rows = pg_admin.execute("SELECT key, count(*) FROM rate_hits GROUP BY key ORDER BY key").fetchall()
    assert rows == [("other", 25), ("shared", 25)]  # refused calls counted nowhere
    kept = pg_admin.execute("SELECT key, n FROM rate_counts ORDER BY key").fetchall()
    assert kept == [("other", 25), ("shared", 25)]  # the kept counts agree with the log


async def test_hit_times_come_from_the_database_clock(pg_dsn: str, pg_admin: psycopg.Connection[Any]) -> None:
    def db_now() -> float:
        row = pg_admin.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])

    store = PostgresState(pg_dsn)  # no clock injected: the server's
    await store.start()
    try:
        before = db_now()
        admitted = await store.admit([Limit("k", 2, 60.0)])
        after = db_now()
        assert admitted.ticket is not None and before <= admitted.ticket.ts <= after
        assert await store.usage([("k", 60.0)]) == {("k", 60.0): 1}
        ticket = await store.record_call(FlowRef("f", "alice"), call("d1", "private"))
        assert isinstance(ticket, FlowTicket)
        assert set((await store.flow("f")).labels) == {"private"}
    finally:
        await store.aclose()


async def test_new_flows_racing_on_two_replicas_respect_the_per_principal_bound(pg_dsn: str) -> None:
    bounds = FlowBounds(per_principal=3)
    a, b = PostgresState(pg_dsn, timeout_s=10.0, flows=bounds), PostgresState(pg_dsn, timeout_s=10.0, flows=bounds)
    await a.start()
    await b.start()
    results: list[FlowTicket | FlowFull] = []

    async def one(store: PostgresState, i: int) -> None:
        results.append(await store.record_call(FlowRef(f"f-{i}", "alice"), call(f"d{i}")))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, a if i % 2 else b, i)
    finally:
        await a.aclose()
        await b.aclose()
    assert sum(isinstance(r, FlowTicket) for r in results) == 3
    assert all("at most 3" in r.reason for r in results if isinstance(r, FlowFull))


async def test_a_hung_server_is_a_state_error_within_the_timeout_and_the_store_recovers(pg_dsn: str) -> None:
    async with hanging_proxy(pg_dsn) as proxy:
        store = PostgresState(proxy.dsn(pg_dsn), timeout_s=0.5)
        await store.start()
        try:
            assert (await store.admit([Limit("k", 5, 60.0)])).admitted
            proxy.hang()
            with anyio.fail_after(5):
                for op in (
                    store.admit([Limit("k", 5, 60.0)]),
                    store.usage([("k", 60.0)]),
                    store.flow("f"),
                    store.record_call(FlowRef("f", "alice"), call("d1")),
                ):
                    with pytest.raises(StateError, match="no answer within 500 ms") as err:
                        await op
                    assert err.value.cause == "no answer within 500 ms"
            # The held bytes are dropped with the connections: the server never saw those statements. (Had the
            # network delivered them late, the admission would count — reported failed, it costs room only.)
            await proxy.cut()
            proxy.recover()
            with anyio.fail_after(10):
                while True:  # the abandoned connections were closed; new ones are made
                    try:
                        usage = await store.usage([("k", 60.0)])
                        break
                    except StateError:
                        await anyio.sleep(0.05)
            assert usage == {("k", 60.0): 1}  # the admission that timed out did not count
        finally:
            await store.aclose()


async def test_a_connection_cut_by_the_server_fails_one_operation_then_reconnects(
    pg_dsn: str, pg_admin: psycopg.Connection[Any]
) -> None:
    store = PostgresState(pg_dsn, timeout_s=5.0)
    await store.start()
    try:
        assert (await store.admit([Limit("k", 5, 60.0)])).admitted
        cut_guard_connections(pg_admin)
        with pytest.raises(StateError, match="cannot count this call"):
            await store.admit([Limit("k", 5, 60.0)])
        assert (await store.admit([Limit("k", 5, 60.0)])).admitted
        assert await store.usage([("k", 60.0)]) == {("k", 60.0): 2}
    finally:
        await store.aclose()


async def test_an_unreachable_server_fails_start_without_the_password(pg_dsn: str) -> None:
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", hostaddr="127.0.0.1", port="1", password="s3cr3t")
    store = PostgresState(dsn, timeout_s=2.0)
    with anyio.fail_after(15), pytest.raises(StateError, match="cannot open") as err:
        await store.start()
    assert "s3cr3t" not in str(err.value)


async def test_open_state_follows_the_audit_backend(pg_dsn: str, tmp_path: Path) -> None:
    settings = parse_settings(
        {"audit": {"backend": "postgres", "dsn": pg_dsn, "state_timeout_ms": 250, "flow_idle_ttl_s": 60}},
        base_dir=str(tmp_path),
    )
    async with open_state(settings) as state:
        assert isinstance(state, PostgresState)
        assert state.timeout_s == 0.25 and state.bounds.idle_s == 60.0
        assert (await state.admit([Limit("k", 1, 1.0)])).admitted
    assert not (tmp_path / "mcp-guard-state.db").exists()  # nothing of SQLite's is created


def test_lock_keys_are_stable_signed_bigints_that_tell_kinds_apart() -> None:
    assert lock_key("rate", "k", 60.0) == lock_key("rate", "k", 60.0)
    assert lock_key("rate", "k", 60.0) != lock_key("rate", "k", 6.0)
    assert lock_key("flow", "x") != lock_key("principal", "x")
    assert all(-(2**63) <= lock_key("flow", str(i)) < 2**63 for i in range(100))


async def test_replicas_starting_together_create_the_tables_once(pg_dsn: str) -> None:
    stores = [PostgresState(pg_dsn, timeout_s=10.0) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.start)
        admitted = [await s.admit([Limit("k", 2, 60.0)]) for s in stores]
    finally:
        for s in stores:
            await s.aclose()
    assert [a.admitted for a in admitted] == [True, True, False, False]
