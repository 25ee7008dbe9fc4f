"""SIGKILL in the middle of a burst on PostgreSQL loses no event whose record() returned, and the chain
verifies — also while a second process keeps writing to the same chain."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import psycopg
import pytest
from anyio.abc import Process
from audit_testkit import PYTHON, child_env, event

from mcp_guard.audit import AuditWriter
from mcp_guard.audit.postgres import open_postgres, open_postgres_reader
from mcp_guard.audit.verify import verify_chain

pytestmark = pytest.mark.anyio

CHILD = str(Path(__file__).with_name("pg_writer_child.py"))


async def _collect(process: Process, into: list[int], want: int | None = None) -> None:
    """Read the child's acknowledged seqs (one per line) until it ends, or until ``want`` are in."""
    assert process.stdout is not None
    buffer = b""
    try:
        while want is None or len(into) < want:
            buffer += await process.stdout.receive()
            *complete, buffer = buffer.split(b"\n")
            into.extend(int(line) for line in complete)
    except anyio.EndOfStream:
        pass


def _stored(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {int(seq): str(who) for seq, who in conn.execute("SELECT seq, principal FROM audit_events")}


@pytest.mark.parametrize("concurrency", [1, 100])
async def test_sigkill_mid_burst_keeps_every_acknowledged_event(pg_dsn: str, concurrency: int) -> None:
    killed_acks: list[int] = []
    other_acks: list[int] = []
    victim = await anyio.open_process([PYTHON, CHILD, pg_dsn, str(concurrency), "0", "victim"], env=child_env())
    other = await anyio.open_process([PYTHON, CHILD, pg_dsn, "10", "1500", "other"], env=child_env())
    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_collect, other, other_acks)  # keeps writing to the same chain
                await _collect(victim, killed_acks, want=1000)
                victim.send_signal(signal.SIGKILL)  # mid-burst: its recorders are still going
            with anyio.fail_after(10):
                await victim.wait()
            await other.wait()
    finally:
        for process in (victim, other):
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(10):
                    await process.wait()
            await process.aclose()
    assert victim.returncode == -signal.SIGKILL
    assert other.returncode == 0

    stored = _stored(pg_dsn)
    missing = sorted(set(killed_acks) - {s for s, who in stored.items() if who == "victim"})
    assert missing == [], f"acknowledged but lost: {missing[:10]}"
    assert sorted(other_acks) == sorted(s for s, who in stored.items() if who == "other")
    with open_postgres_reader(pg_dsn) as reader:
        result = verify_chain(reader)
    assert result.ok, result.problem
    assert result.head_seq == max(stored) == len(stored)

    # The next writer continues the one chain where the others stopped.
    async with open_postgres(pg_dsn) as backend, AuditWriter.running(backend) as store:
        assert await store.record(event(0)) == len(stored) + 1
    with open_postgres_reader(pg_dsn) as reader:
        assert verify_chain(reader).ok
