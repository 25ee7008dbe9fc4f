"""AuditStore: group commit, commit-before-return, the chain across reopen, and loud failure."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from audit_testkit import event, rows, seqs

from mcp_guard.audit import AuditStore, schema
from mcp_guard.audit.verify import verify_file
from mcp_guard.errors import AuditError

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.db"  # the directory does not exist yet: open creates it


async def test_record_returns_seq_after_commit_visible_to_another_connection(db: Path) -> None:
    async with AuditStore.open(db) as store:

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
    async with AuditStore.open(db, batch_max=256) as store:
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
    async with AuditStore.open(db) as store:
        got: list[int] = []

        async def one(i: int) -> None:
            got.append(await store.record(event(i)))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        assert sorted(got) == list(range(1, 301))
        assert store.stats.batches < 300
        assert store.stats.largest_batch > 1


async def test_rows_hold_the_event_and_chain_links(db: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(1, decision="deny", reasons=("no", "weekend"), result={"is_error": True}))
        await store.record(event(2, reasons=None, arguments=None, duration_ms=None))
    first, second = rows(db)
    assert first["kind"] == "call.decision" and first["decision"] == "deny"
    assert first["reasons"] == '["no","weekend"]'
    assert first["result"] == '{"is_error":true}'
    assert first["arguments"] == '{"priority":1,"title":"ticket 1"}'
    assert first["prev_hash"] == "0" * 64
    assert second["prev_hash"] == first["hash"]
    assert second["reasons"] is None and second["duration_ms"] is None


async def test_odd_values_are_recorded_and_still_verify(db: Path) -> None:
    async with AuditStore.open(db) as store:
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
    async with AuditStore.open(db) as store:
        with pytest.raises(AuditError, match="decision"):
            await store.record(event(1, decision="maybe"))


async def test_reopen_continues_the_chain(db: Path) -> None:
    for round_ in range(3):
        async with AuditStore.open(db) as store:
            for i in range(10):
                await store.record(event(round_ * 10 + i))
    assert seqs(db) == list(range(1, 31))
    result = verify_file(db)
    assert result.ok and result.head_seq == 30


async def test_two_writers_on_one_file_keep_one_chain(db: Path) -> None:
    async with AuditStore.open(db) as a, AuditStore.open(db) as b:
        for i in range(20):
            await (a if i % 2 else b).record(event(i))
        assert verify_file(db).ok
    assert seqs(db) == list(range(1, 21))
    assert verify_file(db).ok


async def test_schema_version_is_recorded_and_newer_versions_refused(db: Path) -> None:
    async with AuditStore.open(db):
        pass
    conn = sqlite3.connect(db, isolation_level=None)
    assert schema.current_version(conn) == schema.SCHEMA_VERSION
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 'now')")
    conn.close()
    with pytest.raises(AuditError, match="newer"):
        async with AuditStore.open(db):
            pass


async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(AuditError, match="cannot open"):
        async with AuditStore.open(path):
            pass


async def test_close_flushes_queued_events(db: Path) -> None:
    async with AuditStore.open(db) as store:
        for i in range(500):
            store.record_nowait(event(i))
    assert len(rows(db)) == 500


async def test_record_after_close_raises(db: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(0))
    assert not store.healthy
    with anyio.fail_after(2), pytest.raises(AuditError, match="closed"):
        await store.record(event(1))
    store.record_nowait(event(2))  # never raises
    assert store.stats.dropped == 1


async def test_record_nowait_drops_and_counts_when_the_queue_is_full(db: Path) -> None:
    async with AuditStore.open(db, queue_max=3) as store:
        for i in range(10):
            store.record_nowait(event(i))  # no await in between: the writer cannot drain
        assert store.stats.dropped == 7
    assert len(rows(db)) == 3


async def test_removed_file_fails_record_promptly(db: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(0))
        assert store.healthy
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{db}{suffix}")
        assert not store.healthy
        with anyio.fail_after(2), pytest.raises(AuditError, match="removed"):
            await store.record(event(1))
        with anyio.fail_after(2), pytest.raises(AuditError, match="removed"):
            await store.record(event(2))  # broken for good
        store.record_nowait(event(3))
        assert store.stats.dropped == 1
        assert "removed" in (store.problem or "")


async def test_replaced_file_fails_record(db: Path, tmp_path: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(0))
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, db)
        with anyio.fail_after(2), pytest.raises(AuditError, match="replaced"):
            await store.record(event(1))
        assert not store.healthy


async def test_disk_full_fails_record_then_recovers(db: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(0))
        # Simulate a full disk: SQLite may not grow the file by a single page (SQLITE_FULL).
        (pages,) = next(iter(await store._db.execute_fetchall("PRAGMA page_count")))
        await store._db.execute(f"PRAGMA max_page_count = {pages}")
        big = {"blob": "x" * 200_000}
        with anyio.fail_after(2), pytest.raises(AuditError, match="full"):
            await store.record(event(1, arguments=big))
        assert not store.healthy
        await store._db.execute("PRAGMA max_page_count = 1073741823")
        seq = await store.record(event(2, arguments=big))
        assert store.healthy
    assert seq == 2  # the failed event left no row and no gap
    assert verify_file(db).ok


async def test_locked_database_fails_record_within_busy_timeout(db: Path) -> None:
    async with AuditStore.open(db, busy_timeout=0.2) as store:
        await store.record(event(0))
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
            with anyio.fail_after(3), pytest.raises(AuditError, match="locked"):
                await store.record(event(1))
            assert not store.healthy
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.record(event(2)) == 2
        assert store.healthy
    assert verify_file(db).ok


async def test_record_wait_is_bounded_even_when_sqlite_waits_longer(db: Path) -> None:
    async with AuditStore.open(db, busy_timeout=3.0, record_timeout=0.3) as store:
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
    async with AuditStore.open(db) as store:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.record(event(7))
    assert [r["decision_id"] for r in rows(db)] == ["dec-7"]


async def test_record_waits_its_turn_when_the_queue_is_full(db: Path) -> None:
    async with AuditStore.open(db, queue_max=4, batch_max=2) as store:
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
    async with AuditStore.open(db, busy_timeout=3.0, record_timeout=0.3, queue_max=1, batch_max=1) as store:
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
    async with AuditStore.open(db) as store:
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


async def test_file_removed_while_a_batch_is_written_fails_that_batch(db: Path) -> None:
    async with AuditStore.open(db) as store:
        await store.record(event(0))
        original = store._insert

        async def insert_then_lose_the_file(batch: list[Any]) -> None:
            await original(batch)
            os.unlink(db)  # the rows just committed went into a file nobody will read

        store._insert = insert_then_lose_the_file  # type: ignore[method-assign]
        with anyio.fail_after(2), pytest.raises(AuditError, match="removed"):
            await store.record(event(1))


async def test_writer_crash_fails_waiters_and_later_calls_without_taking_the_app_down(db: Path) -> None:
    async with AuditStore.open(db) as store:
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


async def test_from_settings_uses_the_audit_table(tmp_path: Path) -> None:
    from mcp_guard.settings import load_settings

    config = tmp_path / "conf" / "mcp-guard.toml"
    config.parent.mkdir()
    config.write_text('[audit]\npath = "data/audit.db"\nbatch_max = 8\nqueue_max = 16\n')
    async with AuditStore.from_settings(load_settings(config)) as store:
        assert store.path == tmp_path / "conf" / "data" / "audit.db"
        for i in range(20):
            store.record_nowait(event(i))
        assert store.stats.dropped == 4  # queue_max
    assert store.stats.largest_batch == 8  # batch_max
