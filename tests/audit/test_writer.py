"""AuditWriter: group commit, commit-before-return, bounded waits and loud failure.

Most tests run the writer over the real SQLite backend (open_sqlite_sink); the ones at the end run it
over an in-memory backend, to pin down the backend contract a second backend must keep."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from audit_testkit import MemoryBackend, MemoryReader, event, rows, seqs

from mcp_guard.audit import AuditWriter, open_sqlite_sink
from mcp_guard.audit.chain import GENESIS, ChainHead, RowBody, chain_rows
from mcp_guard.audit.verify import verify_chain, verify_file
from mcp_guard.errors import AuditError

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.db"  # the directory does not exist yet: open creates it


async def test_record_returns_seq_after_commit_visible_to_another_connection(db: Path) -> None:
    async with open_sqlite_sink(db) as store:

        async def one(i: int) -> None:
            seq = await store.record(event(i))
            # Committed before record() returned: a separate connection sees the row right now.
            conn = sqlite3.connect(db)
            try:
                row = conn.execute("SELECT decision_id FROM audit_events WHERE seq = ?", (seq,)).fetchone()
            finally:
                conn.close()
            assert row == (f"dec-{i}",)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert seqs(db) == list(range(1, 51))
    assert verify_file(db).ok


async def test_group_commit_puts_many_events_in_one_transaction(db: Path) -> None:
    async with open_sqlite_sink(db, batch_max=256) as store:
        for i in range(1000):  # queued without yielding: the writer has not run yet
            store.record_nowait(event(i))
        seq = await store.record(event(1000))
        assert seq == 1001
        # Full batches while the queue is long, then power-of-two batches (one INSERT each):
        # 256 + 256 + 256 + 128 + 64 + 32 + 8 + 1
        assert store.stats.batches == 8
        assert store.stats.largest_batch == 256
        assert store.stats.committed == 1001
    assert len(rows(db)) == 1001


async def test_concurrent_recorders_share_transactions(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        got: list[int] = []

        async def one(i: int) -> None:
            got.append(await store.record(event(i)))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        assert sorted(got) == list(range(1, 301))
        assert store.stats.batches < 300
        assert store.stats.largest_batch > 1


async def test_odd_values_are_recorded_and_still_verify(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(
            event(
                1,
                tool="bad\udc80name",
                arguments={"x": math.nan, "y": (1, 2), "z": {3}, "b": b"\xff", 1: "int key"},
                duration_ms=math.inf,
                details={"text": "caf\u00e9 \U0001f600"},
            )
        )
    (row,) = rows(db)
    assert row["tool"] == "bad\\udc80name"
    assert row["duration_ms"] is None
    assert "café 😀" in row["details"]
    assert verify_file(db).ok


async def test_invalid_decision_is_refused(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        with pytest.raises(AuditError, match="decision"):
            await store.record(event(1, decision="maybe"))


async def test_close_flushes_queued_events(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        for i in range(500):
            store.record_nowait(event(i))
    assert len(rows(db)) == 500


async def test_record_after_close_raises(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))
    assert not store.healthy
    with anyio.fail_after(2), pytest.raises(AuditError, match="closed"):
        await store.record(event(1))
    store.record_nowait(event(2))  # never raises
    assert store.stats.dropped == 1


async def test_record_nowait_drops_and_counts_when_the_queue_is_full(db: Path) -> None:
    async with open_sqlite_sink(db, queue_max=3) as store:
        for i in range(10):
            store.record_nowait(event(i))  # no await in between: the writer cannot drain
        assert store.stats.dropped == 7
    assert len(rows(db)) == 3


async def test_record_wait_is_bounded_even_when_sqlite_waits_longer(db: Path) -> None:
    async with open_sqlite_sink(db, busy_timeout=3.0, record_timeout=0.3) as store:
        await store.record(event(0))
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with anyio.fail_after(2), pytest.raises(AuditError, match="did not commit"):
                await store.record(event(1))
            assert store.stats.expired == 1
        finally:
            other.execute("ROLLBACK")
            other.close()


async def test_cancelled_caller_still_gets_its_event_written(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.record(event(7))
    assert [r["decision_id"] for r in rows(db)] == ["dec-7"]


async def test_record_waits_its_turn_when_the_queue_is_full(db: Path) -> None:
    async with open_sqlite_sink(db, queue_max=4, batch_max=2) as store:
        got: dict[int, int] = {}

        async def one(i: int) -> None:
            got[i] = await store.record(event(i))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert sorted(got.values()) == list(range(1, 51))
    assert [got[i] for i in range(50)] == list(range(1, 51))  # first come, first committed
    assert verify_file(db).ok


async def test_record_waiting_for_room_is_bounded_too(db: Path) -> None:
    async with open_sqlite_sink(db, busy_timeout=3.0, record_timeout=0.3, queue_max=1, batch_max=1) as store:
        await store.record(event(0))
        other = sqlite3.connect(db, isolation_level=None)
        errors: list[str] = []

        async def one(i: int) -> None:
            try:
                await store.record(event(i))
            except AuditError as e:
                errors.append(str(e))

        try:
            other.execute("BEGIN EXCLUSIVE")
            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    for i in range(1, 6):
                        tg.start_soon(one, i)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert len(errors) == 5 and all("did not commit" in e for e in errors)


async def test_one_bad_event_does_not_fail_its_batch(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        for i in range(5):
            store.record_nowait(event(i))
        store.record_nowait(event(5, kind=""))  # refused at the door (kind is required)
        store.record_nowait(event(6, principal=42, server=["not", "text"]))  # stored as text
        assert await store.record(event(7)) == 7
        assert store.stats.dropped == 1
    stored = rows(db)
    assert [r["decision_id"] for r in stored] == [f"dec-{i}" for i in (0, 1, 2, 3, 4, 6, 7)]
    assert (stored[5]["principal"], stored[5]["server"]) == ("42", "['not', 'text']")
    assert verify_file(db).ok


async def test_writer_crash_fails_waiters_and_later_calls_without_taking_the_app_down(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))

        async def crash(batch: list[Any]) -> None:
            raise RuntimeError("bug in the writer")

        store._commit = crash  # type: ignore[method-assign]
        with anyio.fail_after(2), pytest.raises(AuditError, match="writer failed"):
            await store.record(event(1))
        assert not store.healthy
        with anyio.fail_after(2), pytest.raises(AuditError, match="writer failed"):
            await store.record(event(2))
        store.record_nowait(event(3))
        assert store.stats.dropped == 1
    assert len(rows(db)) == 1


# ---------------------------------------------------------------------------------------------- the seam


async def test_any_backend_gets_numbered_hashed_batches_that_verify() -> None:
    backend = MemoryBackend()
    async with AuditWriter.running(backend, batch_max=64) as writer:
        for i in range(100):
            writer.record_nowait(event(i))
        assert await writer.record(event(100)) == 101
    assert backend.batches == [64, 32, 4, 1]  # power-of-two batches: one statement each
    assert [r[0] for r in backend.rows] == list(range(1, 102))
    result = verify_chain(MemoryReader(backend.rows))
    assert result.ok and result.head_seq == 101


async def test_a_failed_transaction_fails_its_batch_only() -> None:
    backend = MemoryBackend()
    async with AuditWriter.running(backend) as writer:
        await writer.record(event(0))
        backend.fail_next = AuditError("memory: audit write failed: disk I/O error")
        with anyio.fail_after(2), pytest.raises(AuditError, match="disk I/O"):
            await writer.record(event(1))
        assert writer.problem == "memory: audit write failed: disk I/O error"
        assert await writer.record(event(2)) == 2  # nothing of the failed batch was stored: no gap
        assert writer.healthy
        assert writer.stats.failed == 1
    assert verify_chain(MemoryReader(backend.rows)).ok


async def test_a_backend_problem_breaks_the_writer_for_good() -> None:
    backend = MemoryBackend()
    async with AuditWriter.running(backend) as writer:
        await writer.record(event(0))
        backend.gone = "memory: the database is gone"
        assert writer.problem == "memory: the database is gone"
        with anyio.fail_after(2), pytest.raises(AuditError, match="gone"):
            await writer.record(event(1))
        backend.gone = None  # once broken, always broken: the writer does not trust it again
        with anyio.fail_after(2), pytest.raises(AuditError, match="gone"):
            await writer.record(event(2))
    assert len(backend.rows) == 1


async def test_a_backend_bug_stops_the_writer_and_fails_every_waiter() -> None:
    backend = MemoryBackend()
    async with AuditWriter.running(backend) as writer:
        backend.fail_next = KeyError("bug")
        with anyio.fail_after(2), pytest.raises(AuditError, match="writer failed: KeyError"):
            await writer.record(event(0))
        with anyio.fail_after(2), pytest.raises(AuditError, match="writer failed"):
            await writer.record(event(1))
        assert not writer.healthy


async def test_writer_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AuditWriter(MemoryBackend(), batch_max=0)


class _InlineMemoryBackend(MemoryBackend):
    """A MemoryBackend that commits on the loop (``InlineAppend``), and can be told to decline or to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[int] = []
        self.decline = False
        self.bug: Exception | None = None

    def append_now(self, batch: Sequence[RowBody]) -> int | None:
        if self.bug is not None:
            raise self.bug
        if self.decline:
            return None
        head = ChainHead(self.rows[-1][0], self.rows[-1][-1]) if self.rows else GENESIS
        rows, _ = chain_rows(head, batch)
        self.rows.extend(rows)
        self.inline.append(len(rows))
        return head.seq + 1


async def test_a_lone_record_is_committed_by_the_caller_and_a_declined_one_by_the_thread_path() -> None:
    backend = _InlineMemoryBackend()
    async with AuditWriter.running(backend) as writer:
        assert await writer.record(event(0)) == 1
        assert backend.inline == [1] and backend.batches == []
        assert writer._inline_turn and not writer._queue  # committed in record() itself, never queued
        await anyio.lowlevel.checkpoint()
        backend.decline = True
        assert await writer.record(event(1)) == 2  # declined inline: the writer took it to append()
        assert backend.batches == [1]
    assert verify_chain(MemoryReader(backend.rows)).ok


async def test_a_backend_bug_in_the_callers_commit_breaks_the_writer_loudly() -> None:
    backend = _InlineMemoryBackend()
    async with AuditWriter.running(backend) as writer:
        backend.bug = RuntimeError("boom")
        with pytest.raises(AuditError, match="boom"):
            await writer.record(event(0))
        backend.bug = None
        with pytest.raises(AuditError, match="boom"):
            await writer.record(event(1))  # broken for good
        assert not writer.healthy and writer.stats.failed == 1
    assert backend.rows == []
