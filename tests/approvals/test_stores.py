"""The approval stores (memory, SQLite, PostgreSQL) make the same transitions, each atomic, expiry by their clock.

The SQL stores are tested against real databases: a SQLite file opened by two store objects (as the proxy and
the CLI are two processes), and a fresh PostgreSQL database from tests/pg_support.py (fails, never skips,
when there is none)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_guard.approvals import (
    ApprovalRequest,
    ApprovalStore,
    MemoryApprovals,
    SQLiteApprovals,
    Status,
    Verdict,
    binding_of,
)
from mcp_guard.approvals.postgres import PostgresApprovals
from mcp_guard.errors import StateError

pytestmark = pytest.mark.anyio


def _req(*, args: dict[str, Any] | None = None, ttl_s: float = 60.0, principal: str = "agent") -> ApprovalRequest:
    arguments = args if args is not None else {"id": 7}
    return ApprovalRequest(
        principal=principal,
        action="tools/call",
        server="tickets",
        tool="delete_ticket",
        binding=binding_of(
            principal=principal,
            action="tools/call",
            server="tickets",
            tool="delete_ticket",
            arguments=arguments,
            revision="rev1",
        ),
        arguments=arguments,
        policy_revision="rev1",
        reason="deleting is irreversible",
        approvers=("role:secops",),
        ttl_s=ttl_s,
        decision_id="d1",
        session_id="s1",
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApprovalStore]:
    if request.param == "memory":
        yield MemoryApprovals()
        return
    s: SQLiteApprovals | PostgresApprovals
    if request.param == "sqlite":
        s = SQLiteApprovals(tmp_path / "state.db", timeout_s=5)
    else:
        s = PostgresApprovals(request.getfixturevalue("pg_dsn"), timeout_s=5)
    await s.start()
    try:
        yield s
    finally:
        await s.aclose()


async def test_request_reuses_the_open_approval_of_the_same_binding_only(store: ApprovalStore) -> None:
    first, created = await store.request(_req())
    assert created and first.status is Status.PENDING
    again, created = await store.request(_req())
    assert not created and again.id == first.id, "the identical call waits on the approval it already asked for"
    other, created = await store.request(_req(args={"id": 8}))
    assert created and other.id != first.id, "other arguments are another approval"
    mine, created = await store.request(_req(principal="someone-else"))
    assert created and mine.id != first.id, "another requester is another approval"
    assert first.expires_at - first.created_at == pytest.approx(60.0, abs=0.01)
    assert {a.id for a in await store.list([Status.PENDING])} == {first.id, other.id, mine.id}


async def test_single_use_grant_consume_restore(store: ApprovalStore) -> None:
    a, _ = await store.request(_req())
    assert await store.consume(a.id) is None, "a pending approval cannot be consumed"
    granted = await store.decide(a.id, Verdict.GRANT, "bob", "ok")
    assert granted is not None and granted.status is Status.GRANTED and granted.decided_by == "bob"
    assert await store.decide(a.id, Verdict.DENY, "carol", None) is None, "decided once"
    reused, created = await store.request(_req())
    assert not created and reused.status is Status.GRANTED, "a granted, unexecuted approval is still open"
    consumed = await store.consume(a.id)
    assert consumed is not None and consumed.status is Status.EXECUTED
    assert await store.consume(a.id) is None, "single use"
    await store.restore(a.id)
    got = await store.get(a.id)
    assert got is not None and got.status is Status.GRANTED
    assert await store.consume(a.id) is not None
    fresh, created = await store.request(_req())
    assert created and fresh.id != a.id, "after execution the same call asks anew"


async def test_concurrent_consumers_only_one_wins(store: ApprovalStore) -> None:
    a, _ = await store.request(_req())
    await store.decide(a.id, Verdict.GRANT, "bob", None)
    wins: list[bool] = []

    async def consume() -> None:
        wins.append(await store.consume(a.id) is not None)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(consume)
    assert sorted(wins) == [False] * 7 + [True]


async def test_deny_and_unknown(store: ApprovalStore) -> None:
    a, _ = await store.request(_req())
    denied = await store.decide(a.id, Verdict.DENY, "bob", "no")
    assert denied is not None and denied.status is Status.DENIED and denied.comment == "no"
    assert await store.consume(a.id) is None
    assert await store.get("nope") is None
    assert await store.decide("nope", Verdict.GRANT, "bob", None) is None
    assert [x.id for x in await store.list([Status.DENIED])] == [a.id]


async def test_expiry_is_the_stores_clock(store: ApprovalStore) -> None:
    a, _ = await store.request(_req(ttl_s=0.2))
    with anyio.fail_after(10):
        while (got := await store.get(a.id)) is not None and got.status is Status.PENDING:  # noqa: ASYNC110 - the store (or another task) changes it
            await anyio.sleep(0.02)
    assert got is not None and got.status is Status.EXPIRED
    assert await store.decide(a.id, Verdict.GRANT, "bob", None) is None, "too late to approve"
    assert [x.id for x in await store.list([Status.EXPIRED])] == [a.id]
    expired = await store.expire(a.id)
    assert expired is not None and expired.status is Status.EXPIRED
    assert await store.expire(a.id) is None, "expired once (one approval.expired row)"
    again, created = await store.request(_req(ttl_s=0.2))
    assert created and again.id != a.id


async def test_a_granted_approval_expires_unused(store: ApprovalStore) -> None:
    a, _ = await store.request(_req(ttl_s=0.2))
    await store.decide(a.id, Verdict.GRANT, "bob", None)
    with anyio.fail_after(10):
        while (got := await store.get(a.id)) is not None and got.status is Status.GRANTED:  # noqa: ASYNC110 - the store (or another task) changes it
            await anyio.sleep(0.02)
    assert got is not None and got.status is Status.EXPIRED
    assert await store.consume(a.id) is None


async def test_two_sqlite_handles_on_one_file_see_each_other(tmp_path: Path) -> None:
    """The proxy and `mcp-guard approvals approve` are two processes on the state file."""
    proxy, cli = SQLiteApprovals(tmp_path / "s.db"), SQLiteApprovals(tmp_path / "s.db")
    await proxy.start()
    await cli.start()
    a, _ = await proxy.request(_req())
    assert await cli.decide(a.id, Verdict.GRANT, "bob", None) is not None
    got = await proxy.get(a.id)
    assert got is not None and got.status is Status.GRANTED


async def test_sqlite_store_that_cannot_open_raises_state_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StateError):
        await SQLiteApprovals(tmp_path / "dir.db").start()


async def test_postgres_unreachable_raises_state_error() -> None:
    store = PostgresApprovals("postgresql://nobody@127.0.0.1:1/none", timeout_s=2)
    with pytest.raises(StateError) as e:
        await store.start()
    assert "password" not in str(e.value)


async def test_two_postgres_handles_see_each_other(pg_dsn: str) -> None:
    """Two replicas on one DSN: an approval granted through one releases the call parked on the other."""
    replica_a, replica_b = PostgresApprovals(pg_dsn, timeout_s=5), PostgresApprovals(pg_dsn, timeout_s=5)
    await replica_a.start()
    await replica_b.start()
    try:
        a, _ = await replica_a.request(_req())
        same, created = await replica_b.request(_req())
        assert not created and same.id == a.id, "one approval per binding across replicas"
        assert await replica_b.decide(a.id, Verdict.GRANT, "bob", None) is not None
        got = await replica_a.get(a.id)
        assert got is not None and got.status is Status.GRANTED
    finally:
        await replica_a.aclose()
        await replica_b.aclose()
