"""The SQLite backend: stored rows, the chain across reopen and writers, the inode check, loud failure;
and its reader (the AuditReader protocol on SQLite)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from audit_testkit import event, rows, seqs, tamper

from mcp_guard.audit import AuditWriter, Filters, open_sqlite_sink, schema
from mcp_guard.audit import sqlite as audit_sqlite
from mcp_guard.audit.chain import GENESIS, ChainHead, canonical_json
from mcp_guard.audit.sqlite import SqliteBackend, open_sqlite, open_sqlite_reader
from mcp_guard.audit.verify import verify_file
from mcp_guard.errors import AuditError

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.db"  # the directory does not exist yet: open creates it


def sqlite_backend(writer: AuditWriter) -> SqliteBackend:
    assert isinstance(writer.backend, SqliteBackend)
    return writer.backend


async def test_rows_hold_the_event_and_chain_links(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
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


async def test_reopen_continues_the_chain(db: Path) -> None:
    for round_ in range(3):
        async with open_sqlite_sink(db) as store:
            for i in range(10):
                await store.record(event(round_ * 10 + i))
    assert seqs(db) == list(range(1, 31))
    result = verify_file(db)
    assert result.ok and result.head_seq == 30


def _pragma(path: Path, name: str) -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


async def test_a_new_file_gets_small_pages_and_a_backstop_of_the_same_bytes(db: Path) -> None:
    async with open_sqlite(db) as backend:
        assert await backend.append([_body(1)]) == 1
        # the thread connection's automatic checkpoint: 64 MiB of WAL, whatever the page size
        backstop = int(next(iter(await backend._db.execute_fetchall("PRAGMA wal_autocheckpoint")))[0])
    assert _pragma(db, "page_size") == 1024
    assert backstop == 64 * 1024 * 1024 // 1024
    assert verify_file(db).ok


async def test_a_file_made_with_other_pages_keeps_them(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE earlier (x)")  # made (by an earlier version, say) before the audit opens it
    conn.close()
    for i in range(2):
        async with open_sqlite(db) as backend:
            assert await backend.append([_body(i)]) == i + 1
            backstop = int(next(iter(await backend._db.execute_fetchall("PRAGMA wal_autocheckpoint")))[0])
        assert backstop == 64 * 1024 * 1024 // 4096
    assert _pragma(db, "page_size") == 4096
    assert seqs(db) == [1, 2] and verify_file(db).ok


async def test_two_writers_on_one_file_keep_one_chain(db: Path) -> None:
    async with open_sqlite_sink(db) as a, open_sqlite_sink(db) as b:
        for i in range(20):
            await (a if i % 2 else b).record(event(i))
        assert verify_file(db).ok
    assert seqs(db) == list(range(1, 21))
    assert verify_file(db).ok


async def test_schema_version_is_recorded_and_newer_versions_refused(db: Path) -> None:
    async with open_sqlite_sink(db):
        pass
    conn = sqlite3.connect(db, isolation_level=None)
    assert schema.current_version(conn) == schema.SCHEMA_VERSION
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 'now')")
    conn.close()
    with pytest.raises(AuditError, match="newer"):
        async with open_sqlite_sink(db):
            pass


async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(AuditError, match="cannot open"):
        async with open_sqlite_sink(path):
            pass


async def test_removed_file_fails_record_promptly(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
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
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, db)
        with anyio.fail_after(2), pytest.raises(AuditError, match="replaced"):
            await store.record(event(1))
        assert not store.healthy


async def test_disk_full_fails_record_then_recovers(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        backend = sqlite_backend(store)
        await store.record(event(0))
        # Simulate a full disk: SQLite may not grow the file by a single page (SQLITE_FULL).
        (pages,) = next(iter(await backend._db.execute_fetchall("PRAGMA page_count")))
        await backend._db.execute(f"PRAGMA max_page_count = {pages}")  # a per-connection limit: both of them
        assert backend._fast is not None
        backend._fast.execute(f"PRAGMA max_page_count = {pages}")
        big = {"blob": "x" * 200_000}
        with anyio.fail_after(2), pytest.raises(AuditError, match="full"):
            await store.record(event(1, arguments=big))
        assert not store.healthy
        await backend._db.execute("PRAGMA max_page_count = 1073741823")
        backend._fast.execute("PRAGMA max_page_count = 1073741823")
        seq = await store.record(event(2, arguments=big))
        assert store.healthy
    assert seq == 2  # the failed event left no row and no gap
    assert verify_file(db).ok


async def test_locked_database_fails_record_within_busy_timeout(db: Path) -> None:
    async with open_sqlite_sink(db, busy_timeout=0.2) as store:
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


async def test_file_removed_while_a_batch_is_written_fails_that_batch(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))
        backend = sqlite_backend(store)
        original = backend.append

        async def append_then_lose_the_file(batch: Any) -> int:
            first = await original(batch)
            os.unlink(db)  # the rows just committed went into a file nobody will read
            return first

        backend.append = append_then_lose_the_file  # type: ignore[method-assign]
        store._append_now = None  # the thread path (the writer took append_now when it started)
        with anyio.fail_after(2), pytest.raises(AuditError, match="removed"):
            await store.record(event(1))


async def test_file_removed_while_a_batch_is_written_inline_fails_that_batch(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))
        backend = sqlite_backend(store)
        original = backend.append_now

        def append_now_then_lose_the_file(batch: Any) -> int | None:
            first = original(batch)
            assert first is not None
            os.unlink(db)
            return first

        store._append_now = append_now_then_lose_the_file
        with anyio.fail_after(2), pytest.raises(AuditError, match="removed"):
            await store.record(event(1))


# ---------------------------------------------------------------------------------------------- inline commits


async def test_an_uncontended_record_commits_inline_before_it_returns(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        backend = sqlite_backend(store)
        for i in range(5):
            seq = await store.record(event(i))
            assert seqs(db) == list(range(1, seq + 1))  # committed (another connection sees it) before return
        assert backend.inline_batches == store.stats.batches and backend.inline_declined == 0
    assert verify_file(db).ok


async def test_a_lone_record_commits_in_the_callers_task_without_waking_the_writer(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row recorded while nothing else is queued is inserted by record() itself: no future, no writer turn."""
    async with open_sqlite_sink(db) as store:
        wakeups: list[None] = []
        enqueue = AuditWriter._enqueue

        def counted(self: AuditWriter, pending: Any) -> None:
            wakeups.append(None)
            enqueue(self, pending)

        monkeypatch.setattr(AuditWriter, "_enqueue", counted)
        for i in range(3):
            seq = await store.record(event(i))
            assert seqs(db) == list(range(1, seq + 1))  # committed before record() returned
            await anyio.lowlevel.checkpoint()  # the call's trip to its upstream
        assert wakeups == [] and store.stats.batches == 3 and store.stats.committed == 3
        assert sqlite_backend(store).inline_batches == 3
    assert verify_file(db).ok


async def test_queued_rows_keep_their_order_and_load_keeps_group_commit(db: Path) -> None:
    """A row never overtakes one queued before it; once the writer commits several rows at a time, lone rows
    go through the queue too (group commit) until a batch of one says the load is gone."""
    async with open_sqlite_sink(db) as store:
        for i in range(5):
            store.record_nowait(event(i))
        assert await store.record(event(5)) == 6  # behind the five queued rows, in their batch
        assert store.stats.largest_batch > 1
        batches = store.stats.batches
        assert await store.record(event(6)) == 7  # after a grouped batch: through the writer
        assert store._inline_turn is False and store.stats.batches == batches + 1
        await anyio.lowlevel.checkpoint()
        assert await store.record(event(7)) == 8  # the last batch was one row: inline again
        assert store._inline_turn is True  # taken by this record() for the rest of this loop pass
    assert seqs(db) == list(range(1, 9)) and verify_file(db).ok


async def test_recorders_of_one_loop_pass_share_a_transaction(db: Path) -> None:
    """Only the first record() of a pass commits inline; the others of that pass queue and share a batch."""
    async with open_sqlite_sink(db) as store:
        got: list[int] = []

        async def one(i: int) -> None:
            got.append(await store.record(event(i)))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert sorted(got) == list(range(1, 41))
        assert store.stats.batches <= 5 and store.stats.largest_batch == 32  # 1 inline, then 32 + 4 + 2 + 1
    assert verify_file(db).ok


async def test_a_locked_file_hands_the_batch_to_the_thread_which_waits_for_the_lock(db: Path) -> None:
    async with open_sqlite_sink(db, busy_timeout=30.0) as store:
        backend = sqlite_backend(store)
        await store.record(event(0))
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

        def release_once_declined() -> None:  # in a thread: the loop is busy with the record() under test
            deadline = time.monotonic() + 20
            while backend.inline_declined == 0 and time.monotonic() < deadline:
                time.sleep(0.001)  # polling another thread's progress under a deadline
            other.execute("ROLLBACK")

        releaser = threading.Thread(target=release_once_declined)
        releaser.start()
        with anyio.fail_after(30):
            assert await store.record(event(1)) == 2
        releaser.join()
        other.close()
        assert backend.inline_declined == 1 and backend.inline_batches == 1  # event 0 inline, event 1 not
    assert seqs(db) == [1, 2] and verify_file(db).ok


async def test_inline_batches_leave_the_loop_to_others_between_them(db: Path) -> None:
    """Inline commits do not yield by themselves: the writer must, after each, or a backlog would freeze the loop."""
    async with open_sqlite_sink(db, batch_max=16) as store:
        backend = sqlite_backend(store)
        await store.record(event(0))
        for i in range(1, 2001):
            store.record_nowait(event(i))
        await anyio.lowlevel.checkpoint()  # the writer runs at most a batch or two before we are back
        assert 0 < backend.inline_batches < 10 and store.queued > 1900
        with anyio.fail_after(30):
            assert await store.record(event(2001)) == 2002
        assert backend.inline_batches > 100  # the backlog went inline, 16 at a time
    assert verify_file(db).ok


async def test_a_stale_head_inline_is_declined_and_the_thread_chains_on(db: Path) -> None:
    async with open_sqlite(db) as a, open_sqlite(db) as b:
        assert a.append_now([_body(1), _body(2)]) == 1
        assert b.append_now([_body(3)]) is None  # b's head is stale: the explicit seq collides, nothing stored
        assert await b.append([_body(3)]) == 3
        assert b.append_now([_body(4)]) == 4
        assert a.append_now([_body(5)]) is None
    assert seqs(db) == [1, 2, 3, 4] and verify_file(db).ok


async def test_inline_takes_only_one_statement_and_stops_when_checkpoints_fall_behind(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite(db, checkpoint_interval=3600) as backend:
        assert backend.append_now([_body(i) for i in range(3)]) is None  # not a power of two: two statements
        assert backend.append_now([_body(i) for i in range(64)]) is None  # a burst: the thread inserts it
        monkeypatch.setattr(audit_sqlite, "_INLINE_BACKLOG_ROWS", 4)
        assert backend.append_now([_body(i) for i in range(4)]) == 1
        assert backend.append_now([_body(5)]) == 5
        assert backend.append_now([_body(6)]) is None  # 5 rows since the last checkpoint: the thread's turn
        assert await backend.append([_body(6)]) == 6
    async with open_sqlite(db, inline=False) as plain:
        assert plain.append_now([_body(7)]) is None
    assert seqs(db) == list(range(1, 7)) and verify_file(db).ok


# ---------------------------------------------------------------------------------------------- the backend


async def test_backend_appends_numbered_batches_and_chains_on_after_another_writer(db: Path) -> None:
    async with open_sqlite(db) as a, open_sqlite(db) as b:
        assert await a.read_head() == GENESIS
        assert await a.append([_body(1), _body(2)]) == 1
        # b opened before a wrote: its cached head is stale, the explicit seq collides, b chains on.
        assert await b.append([_body(3)]) == 3
        assert await a.append([_body(4)]) == 4
        head = await a.read_head()
    stored = rows(db)
    assert [r["seq"] for r in stored] == [1, 2, 3, 4]
    assert head == ChainHead(4, stored[-1]["hash"])
    assert verify_file(db).ok


async def test_three_backends_appending_at_once_share_one_chain_and_refuse_nothing(db: Path) -> None:
    """Writers on one file in step: a stale head or an invalidated snapshot never fails a batch."""
    appended: list[int] = []
    async with open_sqlite(db) as a, open_sqlite(db) as b, open_sqlite(db) as c:

        async def write(backend: SqliteBackend, base: int) -> None:
            for i in range(60):
                appended.append(await backend.append([_body(base + i)]))

        async with anyio.create_task_group() as tg:
            for n, backend in enumerate((a, b, c)):
                tg.start_soon(write, backend, n * 1000)
    assert sorted(appended) == list(range(1, 181))
    assert [r["seq"] for r in rows(db)] == list(range(1, 181))
    assert verify_file(db).ok


async def test_backend_problem_is_the_inode_check(db: Path, tmp_path: Path) -> None:
    async with open_sqlite(db) as backend:
        assert backend.problem() is None
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, db)
        assert "replaced" in (backend.problem() or "")
        # SQLite still commits, into the file it opened that no path names any more: only the
        # inode check tells that the row is lost.
        assert await backend.append([_body(1)]) == 1
        assert "replaced" in (backend.problem() or "")


@dataclass(frozen=True)
class _Body:
    values: tuple[Any, ...]
    body: bytes


def _body(i: int) -> _Body:
    stored = dict.fromkeys(schema.BODY_COLUMNS) | {"event_id": f"e{i}", "ts": "2026-01-01T00:00:00Z", "kind": "x"}
    values = tuple(stored[c] for c in schema.BODY_COLUMNS)
    return _Body(values, canonical_json(values))


# ---------------------------------------------------------------------------------------------- the reader


@pytest.fixture
async def written(db: Path) -> Path:
    async with open_sqlite_sink(db) as store:
        for i in range(5):
            await store.record(event(i, principal="bob" if i % 2 else "alice", reasons=("r",)))
    return db


async def test_reader_head_and_rows_in_stored_form(written: Path) -> None:
    with open_sqlite_reader(written) as reader:
        assert reader.location == str(written)
        stored = list(reader.rows())
        head = reader.head()
    assert [r[0] for r in stored] == [1, 2, 3, 4, 5]
    assert head == ChainHead(5, stored[-1][-1])
    as_dict = dict(zip(schema.COLUMNS, stored[0], strict=True))
    assert as_dict["reasons"] == '["r"]'  # JSON columns as stored text: what verify hashes
    assert tuple(stored[0]) == tuple(rows(written)[0])


async def test_reader_filters_and_last(written: Path) -> None:
    with open_sqlite_reader(written) as reader:
        assert [r[0] for r in reader.rows(Filters(after_seq=1, until_seq=4))] == [2, 3, 4]
        assert [r[0] for r in reader.rows(Filters(principal="bob"))] == [2, 4]
        assert [r[0] for r in reader.rows(Filters(kinds=("call.*",)), last=2)] == [4, 5]
        assert list(reader.rows(last=0)) == []


async def test_reader_snapshot_holds_still_while_the_proxy_writes(written: Path) -> None:
    with open_sqlite_reader(written) as reader:
        with reader.snapshot():
            before = reader.head()
            async with open_sqlite_sink(written) as store:
                await store.record(event(99))  # committed: a fresh read outside the snapshot sees it
            assert reader.head() == before
            assert len(list(reader.rows())) == 5
        head = reader.head()
        assert head is not None and head.seq == 6


async def test_reader_of_an_empty_log_has_no_head(db: Path) -> None:
    async with open_sqlite_sink(db):
        pass
    with open_sqlite_reader(db) as reader:
        assert reader.head() is None
        assert list(reader.rows()) == []
        assert reader.schema_warnings() == ()


async def test_reader_refuses_what_is_not_an_audit_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit database here"):
        open_sqlite_reader(tmp_path / "missing.db").__enter__()
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).close()
    with pytest.raises(AuditError, match="not an mcp-guard audit database"):
        open_sqlite_reader(plain).__enter__()


def test_reader_waits_for_the_log_to_appear(db: Path) -> None:
    slept: list[float] = []

    def create_on_first_sleep(seconds: float) -> None:
        # The proxy starts while the reader waits: the file and its schema appear between polls.
        if not slept:
            anyio.run(_create, db)
        slept.append(seconds)

    with open_sqlite_reader(db, wait=True, sleep=create_on_first_sleep) as reader:
        assert reader.head() is not None
    assert slept


async def _create(db: Path) -> None:
    async with open_sqlite_sink(db) as store:
        await store.record(event(0))


async def test_reader_reports_missing_triggers(written: Path) -> None:
    tamper(written)
    with open_sqlite_reader(written) as reader:
        assert any("trigger" in w for w in reader.schema_warnings())


async def test_opening_a_file_another_process_is_creating_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `run --workers N`: another process holds the new file's lock while creating it; the open is retried
    # instead of failing the start with "database is locked". The holder lets go after the first refusal.
    path = tmp_path / "audit.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    refusals: list[str] = []
    once = audit_sqlite._connect_once

    async def attempt(p: Path, busy_timeout: float) -> Any:
        try:
            return await once(p, busy_timeout)
        except audit_sqlite._Locked as e:
            refusals.append(str(e))
            if holder.in_transaction:
                holder.execute("COMMIT")
            raise

    monkeypatch.setattr(audit_sqlite, "_connect_once", attempt)
    async with open_sqlite(path, busy_timeout=0.1) as backend:
        assert refusals and "locked" in refusals[0]
        assert backend.appended == 0
    holder.close()
